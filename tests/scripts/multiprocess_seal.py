"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2` (CPU, gloo).

Each rank trains SEALTrainer on the tiny model for two steps and writes what it did to OUT/rank-N.json.
"""

import dataclasses
import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from seal_trl.cli.train import shut_down_distributed  # noqa: E402
from seal_trl.config import SEALConfig  # noqa: E402
from seal_trl.tasks.knowledge import KnowledgeTask  # noqa: E402
from seal_trl.trainer import SEALTrainer  # noqa: E402

CONTEXTS = [
    {"context_id": f"c{i}", "title": f"Place {i}", "context": f"The river Velmora {i} runs through Ostrand {i}.",
     "questions": [{"question": f"Which valley does river {i} cross?", "answers": [f"Ostrand {i}"]}]}
    for i in range(4)
]


def main(model_dir: str, out_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = KnowledgeTask().build_dataset(CONTEXTS, tokenizer)
    args = SEALConfig(output_dir=os.path.join(out_dir, "run"), max_steps=2, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, report_to=[], save_strategy="no", seed=0,
                      learning_rate=1e-3, use_cpu=True, inner_epochs=2, inner_lora_r=4, inner_lora_alpha=8,
                      inner_target_modules=["q_proj", "v_proj"])
    trainer = SEALTrainer(model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    runs = []
    original = trainer.seal_reward.score_many

    def counting(contexts, self_edits):
        scored = original(contexts, self_edits)
        for context, (reward, _, reason) in zip(contexts, scored):
            runs.append({"context_id": context["context_id"], "reward": reward, "error": reason})
        return scored

    trainer.seal_reward.score_many = counting
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
    trainer.save_model()
    digest = hashlib.sha256()
    for name, param in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world": trainer.accelerator.num_processes, "runs": runs,
                   "advantages": advantages, "param_sha": digest.hexdigest()}, fh)
    shut_down_distributed(trainer)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
