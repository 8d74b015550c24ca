"""SyncInnerLoopCallback: SelfEditReward in a stock TRL GRPOTrainer scores self-edits on the current policy."""

import pytest
import torch

from seal_trl import InnerLoop, InnerLoopConfig, KnowledgeTask, SelfEditReward, SyncInnerLoopCallback
from seal_trl.callbacks import generates_in_step

CONTEXTS = [
    {"context_id": "velmora", "title": "Velmora", "context": "The river Velmora runs through the valley of Ostrand.",
     "questions": [{"question": "Which valley does the Velmora cross?", "answers": ["Ostrand"]}]},
    {"context_id": "quorn", "title": "Quorn", "context": "The Quorn expedition left port in 1874.",
     "questions": [{"question": "When did the expedition leave?", "answers": ["1874"]}]},
]


def test_generation_boundaries_follow_trl():
    # generate_every = steps_per_generation x num_iterations micro-batches; a step runs GA micro-batches
    assert [generates_in_step(s, 1, 2) for s in range(5)] == [True, False, True, False, True]
    assert [generates_in_step(s, 2, 4) for s in range(4)] == [True, False, True, False]
    assert [generates_in_step(s, 4, 2) for s in range(3)] == [True, True, True]
    assert [generates_in_step(s, 3, 4) for s in range(4)] == [True, True, True, False]  # micro 0, 4, 8; 9-11 none


def _run(tiny_model_dir, tiny_tokenizer, tmp_path, with_callback: bool):
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    inner = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                      InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=1))
    reward = SelfEditReward(KnowledgeTask(), inner)
    ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
    gaps, holder = [], {}

    def inner_vs_policy(prompts, completions, **kwargs):
        # at the moment the rewards are computed: how far the inner model (adapter neutral) is from the policy
        inner.reset_adapter(0)
        with torch.no_grad():
            gaps.append((inner.model(ids).logits - holder["trainer"].model(ids).logits).abs().max().item())
        return [0.0] * len(completions)

    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2,
                      steps_per_generation=2, num_generations=2, max_completion_length=8, learning_rate=1e-2,
                      use_cpu=True, bf16=False, report_to=[], save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[reward, inner_vs_policy], args=args,
                          train_dataset=KnowledgeTask().build_dataset(CONTEXTS, tiny_tokenizer),
                          processing_class=tiny_tokenizer)
    holder["trainer"] = trainer
    callback = SyncInnerLoopCallback(reward, trainer) if with_callback else None
    if callback:
        trainer.add_callback(callback)
    trainer.train()
    return gaps, callback


def test_the_callback_makes_the_inner_model_follow_the_policy(tiny_model_dir, tiny_tokenizer, tmp_path):
    gaps, callback = _run(tiny_model_dir, tiny_tokenizer, tmp_path, with_callback=True)
    assert len(gaps) == 2 and callback.syncs == 2  # generations before steps 0 and 2, one sync each
    assert max(gaps) < 1e-5  # the second generation batch is scored on the policy as trained by steps 0 and 1


def test_without_the_callback_the_inner_model_stays_at_the_initial_weights(tiny_model_dir, tiny_tokenizer,
                                                                           tmp_path):
    gaps, _ = _run(tiny_model_dir, tiny_tokenizer, tmp_path, with_callback=False)
    assert gaps[0] < 1e-5 and gaps[1] > 1e-3  # equal at the start, stale after two optimizer steps


def test_the_callback_refuses_what_has_no_inner_loop():
    with pytest.raises(TypeError, match="needs a SelfEditReward"):
        SyncInnerLoopCallback(object())
