"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2` (CPU, gloo).

For each policy kind asked for (full, lora, qlora; several share one launch, the launch being most of the cost),
each rank trains SEALTrainer on the tiny model for two optimizer steps and writes what it did to
OUT/KIND/rank-N.json:
per inner run its step, context, reward, before-score and passage baseline; after every sync of the inner model
(at each generation, and once more after the last optimizer step) the largest difference between the inner
model's logits and the gathered policy's on a fixed input.

Usage: multiprocess_seal.py MODEL_DIR OUT_DIR [--policy full,lora,qlora]
"""

import argparse
import dataclasses
import gc
import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl.models import unwrap_model_for_generation  # noqa: E402

from seal_trl.cli.train import shut_down_distributed  # noqa: E402
from seal_trl.config import SEALConfig  # noqa: E402
from seal_trl.models import load_model_and_tokenizer  # noqa: E402
from seal_trl.tasks.knowledge import KnowledgeTask  # noqa: E402
from seal_trl.trainer import SEALTrainer  # noqa: E402

CONTEXTS = [
    {"context_id": f"c{i}", "title": f"Place {i}", "context": f"The river Velmora {i} runs through Ostrand {i}.",
     "questions": [{"question": f"Which valley does river {i} cross?", "answers": [f"Ostrand {i}"]}]}
    for i in range(4)
]
PROBE_IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])


def build_trainer(model_dir: str, out_dir: str, policy_kind: str) -> SEALTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = KnowledgeTask().build_dataset(CONTEXTS, tokenizer)
    # num_generations 4 over 2 ranks x 2 completions: every context's self-edits are split across both ranks
    args = SEALConfig(output_dir=os.path.join(out_dir, "run"), max_steps=2, per_device_train_batch_size=2,
                      num_generations=4, max_completion_length=8, report_to=[], save_strategy="no", seed=0,
                      learning_rate=1e-3, use_cpu=True, inner_epochs=2, inner_lora_r=4, inner_lora_alpha=8,
                      inner_target_modules=["q_proj", "v_proj"], reward_baseline="passage")
    model, peft_config = model_dir, None
    if policy_kind != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    if policy_kind == "qlora":
        model, _ = load_model_and_tokenizer(model_dir, load_in_4bit=True)
    return SEALTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


@torch.no_grad()
def inner_and_policy_logits(trainer: SEALTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner model's logits (inner adapter neutral, as for a before-score) and the gathered policy's on PROBE_IDS.

    Collective under ZeRO-3 (the gather), like the sync itself: every rank calls it at the same point."""
    inner = trainer.inner_loop
    inner._neutralise_adapter()
    inner.model.eval()
    ids = PROBE_IDS.to(trainer.accelerator.device)
    inner_logits = inner.model(input_ids=ids).logits.float()
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                     gather_deepspeed3_params=True) as policy:
        was_training = policy.training
        policy.eval()
        policy_logits = policy(input_ids=ids).logits.float()
        policy.train(was_training)
    return inner_logits, policy_logits


def train_one(model_dir: str, out_dir: str, policy_kind: str) -> SEALTrainer:
    os.makedirs(out_dir, exist_ok=True)
    trainer = build_trainer(model_dir, out_dir, policy_kind)
    runs, syncs = [], []
    original = trainer.seal_reward.score_many

    def recording(contexts, self_edits):
        scored = original(contexts, self_edits)
        references = trainer.seal_reward.last_references or [None] * len(scored)
        for context, (reward, results, reason), reference in zip(contexts, scored, references):
            runs.append({"step": trainer.state.global_step, "context_id": context["context_id"], "reward": reward,
                         "error": reason, "score_before": results[0].score_before, "baseline": reference})
        return scored

    trainer.seal_reward.score_many = recording
    original_sync = trainer._sync_inner_loop

    first_policy_logits = []

    def checked_sync():
        original_sync()
        inner_logits, policy_logits = inner_and_policy_logits(trainer)
        first_policy_logits[:] = first_policy_logits or [policy_logits]
        # moved: how far training has taken the policy from where it started (the check is vacuous at 0)
        syncs.append({"step": trainer.state.global_step,
                      "logits_max_diff": float((inner_logits - policy_logits).abs().max()),
                      "policy_moved": float((policy_logits - first_policy_logits[0]).abs().max())})

    trainer._sync_inner_loop = checked_sync
    # Distinct weights for the first half of the generation batch (1, 2, 3, ...) and 0 for the second, so each
    # rank can check it trains on its own slice, and rank 1 keeps nothing while rank 0 keeps all: its M-step must
    # still take part in the gradient all-reduce, or the ranks would hang.
    def weights(rewards, *args, **kwargs):
        index = torch.arange(len(rewards), dtype=torch.float32)
        return torch.where(index < len(rewards) // 2, index + 1.0, torch.zeros_like(index))

    trainer.variant = dataclasses.replace(trainer.variant, weights=weights)
    advantages = []
    original_apply = trainer._apply_variant

    def capture(output):
        output = original_apply(output)
        advantages.append(output["advantages"].tolist())
        return output

    trainer._apply_variant = capture
    trainer.train()
    trainer._sync_inner_loop()  # the sync the next generation would run: checks the last optimizer step too
    trainer.save_model()
    digest = hashlib.sha256()
    for name, param in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world": trainer.accelerator.num_processes, "policy": policy_kind, "runs": runs,
                   "syncs": syncs, "advantages": advantages, "param_sha": digest.hexdigest()}, fh)
    return trainer


def main(model_dir: str, out_dir: str, policy_kinds: list[str]) -> None:
    for i, kind in enumerate(policy_kinds):
        trainer = train_one(model_dir, os.path.join(out_dir, kind), kind)
        if i < len(policy_kinds) - 1:  # let the next trainer's engine start from a clean slate
            trainer.accelerator.wait_for_everyone()
            trainer.model_wrapped = trainer.model
            trainer.accelerator.free_memory()
            del trainer
            gc.collect()
    shut_down_distributed(trainer)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--policy", default="full", help="comma-separated: full, lora, qlora")
    cli = parser.parse_args()
    kinds = cli.policy.split(",")
    if not set(kinds) <= {"full", "lora", "qlora"}:
        parser.error(f"--policy: {cli.policy!r}; choose from full, lora, qlora")
    main(cli.model_dir, cli.out_dir, kinds)
