"""SEALTrainer and SelfEditReward on the tiny offline model (CPU, fp32)."""

import os

import pytest
import torch

from seal_trl.config import SEALConfig
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.reward import SelfEditReward
from seal_trl.tasks.knowledge import KnowledgeTask
from seal_trl.trainer import SEALTrainer
from seal_trl.variants import grpo_advantages

CONTEXTS = [
    {"context_id": "velmora", "title": "Velmora", "context": "The river Velmora runs through the valley of Ostrand "
     "and feeds three lakes.", "questions": [{"question": "Which valley does the Velmora cross?",
                                               "answers": ["Ostrand"]}]},
    {"context_id": "quorn", "title": "Quorn Expedition", "context": "The Quorn expedition left port in 1874 with "
     "forty sailors.", "questions": [{"question": "When did the expedition leave?", "answers": ["1874"]},
                                     {"question": "How many sailors went?", "answers": ["forty"]}]},
]

TINY_INNER = dict(inner_epochs=2, inner_lora_r=4, inner_lora_alpha=8, inner_target_modules=["q_proj", "v_proj"])


def tiny_args(tmp_path, **overrides):
    # the inner-loop preflight (on by default) is tested in test_preflight.py; here it would only add seconds
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, num_generations=2,
                    max_completion_length=12, use_cpu=True, report_to=[], save_strategy="no", seed=0,
                    learning_rate=1e-3, inner_preflight=False, **TINY_INNER)
    settings.update(overrides)
    return SEALConfig(**settings)


def mean_completion_logp(model, batch):
    """Each completion's mean token log-prob under `model` (the batch as TRL built it)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -batch["completion_ids"].shape[1] - 1:-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    m = batch["completion_mask"].float()
    return (logp * m).sum(1) / m.sum(1)


@pytest.fixture()
def dataset(tiny_tokenizer):
    return KnowledgeTask().build_dataset(CONTEXTS, tiny_tokenizer)


def test_dataset_rows_carry_prompt_and_context(dataset):
    assert set(dataset.column_names) >= {"prompt", "context_id", "title", "context", "questions"}
    assert dataset[0]["prompt"][0]["role"] == "user"  # the tiny tokenizer has a chat template
    assert "The river Velmora" in dataset[0]["prompt"][0]["content"]


def test_rest_em_moves_policy_toward_kept_self_edits(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    # One ReST-EM round: 2 contexts x 4 self-edits, then an M-step of 4 epochs over the kept ones.
    args = tiny_args(tmp_path, max_steps=4, num_iterations=4, num_generations=4, per_device_train_batch_size=8,
                     learning_rate=5e-3, max_completion_length=10)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    # a fresh load, not a deepcopy: TRL patches methods on the policy instance that a copy would still share
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    captured = []
    original = trainer._apply_variant
    trainer._apply_variant = lambda output: captured.append(original(output)) or captured[-1]
    trainer.train()
    assert len(captured) == 1  # one generation batch = one round
    batch = captured[0]
    keep = batch["advantages"] > 0
    assert 0 < keep.sum() < len(keep)
    rewards = torch.tensor([r[0].reward for r in trainer.seal_reward.last_results])
    assert torch.equal(keep, torch.tensor([bool(k) for k in (rewards.view(-1, 4) == rewards.view(-1, 4).max(1,
                       keepdim=True).values).view(-1) & (rewards > 0)]))

    before, after = mean_completion_logp(start, batch), mean_completion_logp(trainer.model.eval(), batch)
    rise = after - before
    assert rise[keep].mean() > 0.5  # the kept self-edits became much more likely
    assert rise[keep].mean() > rise[~keep].mean() + 0.3
    # the inner model mirrors the policy as of the last generation boundary; a sync makes it current
    ids = batch["completion_ids"][:2]
    trainer._sync_inner_loop()
    trainer.inner_loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(trainer.inner_loop.model(input_ids=ids).logits, trainer.model(input_ids=ids).logits,
                              atol=1e-5)
    metrics = trainer.state.log_history[0]
    assert metrics["seal/keep_fraction"] == pytest.approx(keep.float().mean().item())
    assert metrics["inner/failure_rate"] == 0.0


def test_grpo_variant_uses_group_normalised_inner_rewards(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    args = tiny_args(tmp_path, algorithm="grpo", max_steps=1, num_generations=2)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    captured = []
    original = trainer._apply_variant
    trainer._apply_variant = lambda output: captured.append(original(output)) or captured[-1]
    trainer.train()
    rewards = torch.tensor([r[0].reward for r in trainer.seal_reward.last_results])
    assert torch.allclose(captured[0]["advantages"], grpo_advantages(rewards, 2), atol=1e-5)
    assert "grpo" in trainer._tag_names and "seal" in trainer._tag_names


@pytest.mark.parametrize("algorithm", ["grpo", "rest_em"])
def test_the_variant_decides_the_advantages(algorithm, tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    """What the policy trains on comes from the variant, not from TRL's own advantages (which equal GRPO's on
    plain rewards, so the test above alone could not tell): a variant with recognisable weights must show."""
    import dataclasses

    args = tiny_args(tmp_path, algorithm=algorithm, max_steps=1, num_generations=2)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    seen = []

    def marked(rewards, group_size, **_):
        seen.append(rewards.clone())
        return torch.arange(len(rewards), dtype=torch.float32) * 0.25 + 0.5

    trainer.variant = dataclasses.replace(trainer.variant, weights=marked)
    captured = []
    original = trainer._apply_variant
    trainer._apply_variant = lambda output: captured.append(original(output)) or captured[-1]
    trainer.train()
    assert len(seen) == 1 and len(seen[0]) == 2
    assert captured[0]["advantages"].tolist() == [0.5, 0.75]


def test_inner_model_follows_the_policy_after_each_optimizer_step(tiny_model_dir, tiny_tokenizer, dataset,
                                                                   tmp_path):
    """At every generation boundary the inner model is synced to the policy as it is then: after an optimizer
    step moved it, not as it was at the first generation."""
    args = tiny_args(tmp_path, algorithm="grpo", max_steps=3, num_generations=2, learning_rate=5e-2)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    snapshots = []
    original = trainer.seal_reward.score_many

    def check_sync(contexts, self_edits):
        # called while scoring, after this generation's sync and before any training on it
        trainer.inner_loop.reset_adapter(0)
        with torch.no_grad():
            policy = trainer.model(input_ids=ids).logits
            inner = trainer.inner_loop.model(input_ids=ids).logits
        snapshots.append((policy, inner))
        return original(contexts, self_edits)

    trainer.seal_reward.score_many = check_sync
    trainer.train()
    assert len(snapshots) == 3
    for policy, inner in snapshots:
        assert torch.allclose(policy, inner, atol=1e-5)
    assert not torch.allclose(snapshots[0][0], snapshots[2][0], atol=1e-4)  # the policy did move


def test_rest_em_m_step_with_accumulation_and_several_steps_per_generation(tiny_model_dir, tiny_tokenizer, dataset,
                                                                           tmp_path):
    """The shipped recipes' shape: gradient accumulation 2, a generation batch spread over 4 micro-batches
    (2 optimizer steps), 2 epochs over it. Only kept rows go through the model in the M-step, no unused old
    log-probs are computed, and the kept self-edits become more likely than the rest."""
    from transformers import AutoModelForCausalLM

    args = tiny_args(tmp_path, max_steps=4, num_iterations=2, num_generations=4, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, steps_per_generation=4, learning_rate=5e-3,
                     max_completion_length=10)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    captured, forwards = [], []
    original_apply, original_logps = trainer._apply_variant, trainer._get_per_token_logps_and_entropies
    trainer._apply_variant = lambda output: captured.append(original_apply(output)) or captured[-1]

    def counting(model, input_ids, *a, **k):
        out = original_logps(model, input_ids, *a, **k)
        forwards.append((input_ids.shape[0], torch.is_grad_enabled(), out[0] is None))
        return out

    trainer._get_per_token_logps_and_entropies = counting
    trainer.train()
    assert len(captured) == 1
    batch = captured[0]
    keep = batch["advantages"] > 0
    assert 0 < keep.sum() < len(keep)
    kept_tokens = batch["completion_mask"][keep].sum().item()
    assert batch["rest_em_kept_tokens"].tolist() == [kept_tokens] * len(keep)
    generation_calls = [f for f in forwards if f[2]]
    training_rows = sum(rows for rows, grad, skipped in forwards if grad and not skipped)
    assert len(generation_calls) == 1  # the old log-probs were asked for, and skipped
    assert training_rows == 2 * keep.sum().item()  # kept rows only, once per epoch

    rise = mean_completion_logp(trainer.model.eval(), batch) - mean_completion_logp(start, batch)
    assert rise[keep].mean() > rise[~keep].mean() + 0.1


def test_rest_em_never_computes_old_log_probs_and_grpo_still_does(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    """With generation and optimizer steps misaligned (steps_per_generation 2, no accumulation) TRL computes the
    "old" log-probs without grad while it generates: GRPO's ratio reads them, ReST-EM's loss does not. vLLM's
    importance-sampling correction, their other reader, only reweights GRPO's loss, so ReST-EM turns it off."""
    calls = {}
    for algorithm in ("grpo", "rest_em"):
        args = tiny_args(tmp_path / algorithm, algorithm=algorithm, max_steps=1, steps_per_generation=2)
        trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
        original, captured = trainer._get_per_token_logps_and_entropies, []
        computed = calls[algorithm] = []

        def counting(model, input_ids, *a, _original=original, _computed=computed, _trainer=trainer, **k):
            out = _original(model, input_ids, *a, **k)
            if _trainer._generating and not torch.is_grad_enabled():
                _computed.append(out[0] is not None)
            return out

        trainer._get_per_token_logps_and_entropies = counting
        apply = trainer._apply_variant
        trainer._apply_variant = lambda output, _apply=apply, _c=captured: _c.append(_apply(output)) or _c[-1]
        trainer.train()
        assert ("old_per_token_logps" in captured[0]) == (algorithm == "grpo")
        # the vLLM correction's flags as a vLLM run would have them: GRPO keeps the correction, ReST-EM drops it
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        trainer._prepare_rest_em_loss()
        assert trainer.vllm_importance_sampling_correction is (algorithm == "grpo")
    assert calls == {"grpo": [True], "rest_em": [False]}


@pytest.mark.parametrize("lora", [False, True])
def test_rest_em_loss_is_the_nll_at_temperature_one_whatever_the_sampling_temperature(lora, tiny_model_dir,
                                                                                      tiny_tokenizer, dataset,
                                                                                      tmp_path):
    """Self-edits sampled at temperature 0.5 are trained on their NLL under the model itself (temperature 1):
    the M-step loss equals log_softmax of the plain logits on the completion tokens, not of logits / 0.5."""
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, temperature=0.5), train_dataset=dataset,
                          processing_class=tiny_tokenizer, peft_config=peft_config)
    assert trainer.temperature == 0.5 and trainer.generation_config.temperature == 0.5  # sampling unchanged
    model = trainer.model.eval()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    completion = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 0]])
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": completion_mask, "advantages": torch.ones(2),
              "rest_em_kept_tokens": torch.full((2,), 7.0)}
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs)
        logits = model(input_ids=torch.cat([prompt, completion], 1),
                       attention_mask=torch.cat([torch.ones_like(prompt), completion_mask], 1)).logits[:, 2:-1]

    def nll(temperature):
        logps = torch.log_softmax(logits.float() / temperature, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        return -(logps * completion_mask).sum() / completion_mask.sum()

    assert abs(nll(1.0) - nll(0.5)) > 0.01  # 1000 times the tolerance below
    assert loss.item() == pytest.approx(nll(1.0).item(), abs=1e-5)


def test_grpo_log_probs_stay_at_the_sampling_temperature(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    """GRPO's ratio compares the policy with the distribution that sampled: TRL's log-probs at temperature 0.5."""
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, algorithm="grpo", temperature=0.5),
                          train_dataset=dataset, processing_class=tiny_tokenizer)
    model = trainer.model.eval()
    ids = torch.tensor([[5, 6, 7, 11, 12, 13]])
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), 3)[0]
        logits = model(input_ids=ids).logits[:, 2:-1].float()
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, ids[:, 3:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logps, expected, atol=1e-5)


def test_rest_em_loss_weighs_each_kept_token_alike_whichever_micro_batch_it_is_in(tiny_model_dir, tiny_tokenizer,
                                                                                   dataset, tmp_path):
    """The M-step loss divides by the kept tokens of the whole generation batch, not of each micro-batch: split
    into micro-batches of unequal length, the parts add up to the loss of the batch in one piece."""
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path), train_dataset=dataset,
                          processing_class=tiny_tokenizer)
    model = trainer.model.eval()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10], [4, 4, 4]])
    completion = torch.tensor([[11, 12, 13, 14], [15, 16, 0, 0], [20, 21, 22, 23]])
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    advantages = torch.tensor([1.0, 1.0, 0.0])  # the third row is not kept
    whole = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
             "completion_mask": completion_mask, "advantages": advantages, "rest_em_kept_tokens": torch.full((3,), 6.0)}
    with torch.no_grad():
        loss = trainer._compute_loss(model, whole)
        parts = [trainer._compute_loss(model, {k: v[rows] for k, v in whole.items()}) for rows in ([0], [1, 2])]
    assert sum(parts).item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rest_em"])
def test_failed_self_edits_are_never_kept_and_rank_last_in_training(algorithm, tiny_model_dir, tiny_tokenizer,
                                                                    dataset, tmp_path):
    """The trainer's wiring of failures, whatever reward a failed self-edit carries: the first self-edit of each
    context fails (here with the best reward of its group), so ReST-EM must not keep it and GRPO must give it
    its group's lowest advantage."""
    import dataclasses

    args = tiny_args(tmp_path, algorithm=algorithm, max_steps=1, num_generations=2, per_device_train_batch_size=4,
                     rest_em_margin=None)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    original = trainer.seal_reward.score_many

    def first_of_each_group_fails(contexts, self_edits):
        scored = original(contexts, self_edits)
        return [(10.0, [dataclasses.replace(runs[0], error="unparseable", score_after=None)], reason)
                if i % 2 == 0 else (reward, runs, reason) for i, (reward, runs, reason) in enumerate(scored)]

    trainer.seal_reward.score_many = first_of_each_group_fails
    captured = []
    apply = trainer._apply_variant
    trainer._apply_variant = lambda output: captured.append(apply(output)) or captured[-1]
    trainer.train()
    advantages = captured[0]["advantages"].view(-1, 2)
    if algorithm == "rest_em":
        assert advantages[:, 0].tolist() == [0.0, 0.0] and advantages[:, 1].tolist() == [1.0, 1.0]
    else:
        assert torch.all(advantages[:, 0] < advantages[:, 1])


def test_a_reward_call_whose_runs_all_raise_stops_training(tiny_model_dir, tiny_tokenizer, dataset, tmp_path,
                                                           monkeypatch):
    """An exception in every inner run is a setup fault: training must stop with the traceback, not score 0s."""
    from seal_trl.reward import SystematicInnerFailure

    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, max_steps=1), train_dataset=dataset,
                          processing_class=tiny_tokenizer)

    def broken(*args, **kwargs):
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation")

    monkeypatch.setattr(trainer.inner_loop, "_train", broken)
    with pytest.raises(SystematicInnerFailure, match="2 of 2 inner runs failed") as info:
        trainer.train()
    assert "leaf Variable" in str(info.value) and "Traceback" in str(info.value)


def test_an_inner_model_out_of_memory_on_every_run_stops_the_first_reward_call(tiny_model_dir, tiny_tokenizer,
                                                                                 dataset, tmp_path, monkeypatch):
    """Every inner run out of memory: not 0-reward self-edits but a setup fault, stopped in the first reward call
    with the settings to lower."""
    from seal_trl.reward import SystematicInnerFailure

    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path), train_dataset=dataset,
                          processing_class=tiny_tokenizer)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls = []
    original = trainer.seal_reward.score_many
    monkeypatch.setattr(trainer.seal_reward, "score_many", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(trainer.inner_loop, "_train", out_of_memory)
    with pytest.raises(SystematicInnerFailure, match="2 of 2 inner runs failed \\(2 out_of_memory") as info:
        trainer.train()
    message = str(info.value)
    assert len(calls) == 1 and trainer.state.global_step == 0
    for knob in ("inner_batch_self_edits", "inner_max_seq_length", "inner_load_in_4bit",
                 "inner_gradient_checkpointing"):
        assert knob in message


def test_qlora_policy_trains_with_real_rewards(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    """The usual way to train a large model with TRL: a 4-bit base + LoRA. Its weights reach the inner model
    (full precision here), rewards are real (nonzero, varying), and the inner model computes what the policy
    computes after a sync."""
    from peft import LoraConfig

    from seal_trl.models import load_model_and_tokenizer

    policy, _ = load_model_and_tokenizer(str(tiny_model_dir), load_in_4bit=True)
    args = tiny_args(tmp_path, algorithm="grpo", max_steps=2, num_generations=2)
    trainer = SEALTrainer(policy, args=args, train_dataset=dataset, processing_class=tiny_tokenizer,
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    rewards = []
    original = trainer.seal_reward.score_many
    trainer.seal_reward.score_many = lambda c, e: [rewards.append(s[0]) or s for s in original(c, e)]
    trainer.train()
    assert len(rewards) == 4 and all(r != 0.0 for r in rewards) and len(set(rewards)) > 1
    assert all(runs[0].ok for runs in trainer.seal_reward.last_results)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    trainer._sync_inner_loop()
    trainer.inner_loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(trainer.inner_loop.model(input_ids=ids).logits,
                              trainer.model.eval()(input_ids=ids).logits, atol=1e-4)


def test_lora_policy_trains_and_pushes_adapter_with_seal_card(tiny_model_dir, tiny_tokenizer, dataset, tmp_path,
                                                              monkeypatch):
    from peft import LoraConfig

    args = tiny_args(tmp_path, max_steps=1, hub_model_id="someone/seal-tiny")
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer,
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    # the inner model mirrors the LoRA policy through a frozen "policy" adapter
    assert "policy" in trainer.inner_loop.model.peft_config
    uploads = {}

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads["repo"] = repo_id
            uploads["files"] = sorted(os.listdir(folder_path))
            uploads["card"] = open(os.path.join(folder_path, "README.md")).read()
            return "https://hub.example/commit"

    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    trainer.push_to_hub()
    assert uploads["repo"] == "someone/seal-tiny"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(uploads["files"])
    assert "seal" in uploads["card"] and "rest-em" in uploads["card"]
    assert "Self-Adapting Language Models" in uploads["card"] and "2506.10943" in uploads["card"]


@pytest.mark.parametrize("trainer_name", ["GRPOTrainer", "RLOOTrainer"])
def test_self_edit_reward_drops_into_stock_trl_trainers(trainer_name, tiny_model_dir, tiny_tokenizer, dataset,
                                                        tmp_path):
    import trl
    from transformers import AutoModelForCausalLM

    inner = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                      InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2))
    reward = SelfEditReward(KnowledgeTask(), inner)
    config_cls = getattr(trl, trainer_name.replace("Trainer", "Config"))
    args = config_cls(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, use_cpu=True, bf16=False, report_to=[],
                      save_strategy="no", gradient_checkpointing=False, logging_steps=1)
    trainer = getattr(trl, trainer_name)(model=str(tiny_model_dir), reward_funcs=[reward], args=args,
                                         train_dataset=dataset, processing_class=tiny_tokenizer)
    trainer.train()
    assert reward.last_results and all(runs[0].ok for runs in reward.last_results)
    assert any("rewards/seal_inner_loop/mean" in h for h in trainer.state.log_history)


def test_bad_self_edits_score_zero_and_training_continues(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    inner = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                      InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2))
    reward = SelfEditReward(KnowledgeTask(style="self_qa"), inner, repeats=2)
    logged, metrics = {}, {}
    columns = {k: [dataset[0][k]] * 3 for k in ("context_id", "title", "context", "questions")}
    values = reward(["p"] * 3, ["", "no pairs here", "Question: Which valley?\nAnswer: Ostrand"],
                    log_extra=lambda c, v: logged.__setitem__(c, v),
                    log_metric=lambda n, v: metrics.__setitem__(n, v), **columns)
    assert values[0] == 0.0 and values[1] == 0.0 and values[2] != 0.0
    assert logged["inner_error"] == ["empty", "unparseable", ""]
    assert metrics["inner/failure_rate"] == pytest.approx(2 / 3)
    assert len(reward.last_results[2]) == 2  # repeats
    with pytest.raises(KeyError, match="missing column"):
        reward(["p"], ["x"], context_id=["a"])


def test_a_step_budget_below_the_inner_epochs_is_refused_for_the_knowledge_task(tmp_path):
    from seal_trl.tasks.arc.task import ArcTask

    args = SEALConfig(output_dir=str(tmp_path), use_cpu=True, inner_epochs=10, inner_step_budget=5)
    with pytest.raises(ValueError, match="inner_step_budget=5 is below inner_epochs=10: every knowledge self-edit"):
        SEALTrainer("unused-model", args=args)
    with pytest.raises(Exception) as err:  # ARC self-edits choose their own epochs: the budget is not refused
        SEALTrainer("unused-model", args=args, task=ArcTask())
    assert "inner_step_budget" not in str(err.value)


def test_the_knowledge_task_refuses_an_unknown_self_edit_style_before_loading_anything(tmp_path):
    args = SEALConfig(output_dir=str(tmp_path), use_cpu=True, self_edit_style="poem")
    with pytest.raises(ValueError, match="self_edit_style='poem'; choose one of"):
        SEALTrainer("unused-model", args=args)


def test_config_rejects_inconsistent_settings(tmp_path):
    with pytest.raises(ValueError, match="algorithm"):
        SEALConfig(output_dir=str(tmp_path), algorithm="ppo")
    with pytest.raises(ValueError, match="beta"):
        SEALConfig(output_dir=str(tmp_path), beta=0.1)
    with pytest.raises(ValueError, match="rest_em_top_k and/or rest_em_margin"):
        SEALConfig(output_dir=str(tmp_path), rest_em_top_k=None, rest_em_margin=None)
    with pytest.raises(ValueError, match="scale_rewards"):
        SEALConfig(output_dir=str(tmp_path), algorithm="grpo", scale_rewards="batch")
    with pytest.raises(ValueError, match="target_modules"):
        SEALConfig(output_dir=str(tmp_path), inner_target_modules=[])
    for bad in ({"inner_epochs": 0}, {"max_completion_length": 0}, {"per_device_train_batch_size": 0},
                {"temperature": -1.0}, {"inner_learning_rate": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SEALConfig(output_dir=str(tmp_path), **bad)
    with pytest.raises(ValueError, match="inner_judge_model"):
        SEALConfig(output_dir=str(tmp_path), inner_grader="judge")
    with pytest.raises(ValueError, match="inner_judge_model is set but inner_grader='f1' does not use a judge"):
        SEALConfig(output_dir=str(tmp_path), inner_grader="f1", inner_judge_model="judges/small")
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        SEALConfig(output_dir=str(tmp_path), multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="FSDP is not supported.*zero3.yaml"):
        SEALConfig(output_dir=str(tmp_path), fsdp="full_shard")
    config = SEALConfig(output_dir=str(tmp_path), use_cpu=True)
    assert config.bf16 is False and config.learning_rate == 3e-4 and config.gradient_checkpointing is False


def test_in_memory_policy_without_a_path(tiny_tokenizer, dataset, tmp_path):
    from seal_trl.testing import build_tiny_model

    policy = build_tiny_model(tiny_tokenizer, seed=3)
    policy.config._name_or_path = ""
    trainer = SEALTrainer(policy, args=tiny_args(tmp_path, max_steps=1), train_dataset=dataset,
                          processing_class=tiny_tokenizer)
    trainer.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    trainer._sync_inner_loop()
    trainer.inner_loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(trainer.inner_loop.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5)


def test_four_bit_inner_model_in_trainer(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, max_steps=1, inner_load_in_4bit=True),
                          train_dataset=dataset, processing_class=tiny_tokenizer)
    assert any(type(m).__name__ == "Linear4bit" for m in trainer.inner_loop.model.modules())
    trainer.train()
    assert all(runs[0].ok for runs in trainer.seal_reward.last_results)


def test_tokenizer_without_pad_token_still_trains(tiny_model_dir, dataset, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, max_steps=1), train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    assert all(runs[0].ok for runs in trainer.seal_reward.last_results)


def test_batched_inner_loop_in_the_trainer_gives_the_same_rewards(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    rewards = {}
    for k in (1, 4):
        args = tiny_args(tmp_path / f"k{k}", algorithm="grpo", max_steps=1, num_generations=2,
                         per_device_train_batch_size=4, inner_batch_self_edits=k)
        trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
        assert trainer.inner_loop.config.batch_self_edits == k
        trainer.train()
        rewards[k] = [r[0].reward for r in trainer.seal_reward.last_results]
    assert len(rewards[4]) == 4 and any(r != 0.0 for r in rewards[1])
    assert rewards[4] == pytest.approx(rewards[1], abs=1e-4)


def test_reward_terms_reach_the_trainer_and_are_logged(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    def never_fails(outputs):
        return None

    args = tiny_args(tmp_path, max_steps=1, reward_forgetting_weight=2.0, reward_general_metric="qa",
                     reward_constraint_weight=0.5, reward_banned_phrases=["zzqx-never-said"])
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer,
                          reward_constraints=[never_fails])
    terms = trainer.seal_reward.terms
    assert (terms.forgetting_weight, terms.general_metric, terms.constraint_weight) == (2.0, "qa", 0.5)
    assert terms.constraints == (never_fails,)
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"reward/gain", "reward/forgetting", "reward/violations", "reward/general_before_qa"} <= logged
    assert "seal/reward_mean" in logged and "seal/gain_mean" not in logged  # the score is no longer the gain alone
    last = trainer.seal_reward.last_terms
    assert [r[0].reward for r in trainer.seal_reward.last_results] == [t["gain"] for t in last]
    assert all(t["reward"] == pytest.approx(t["gain"] - 2.0 * max(0.0, t["forgetting"])) for t in last)
