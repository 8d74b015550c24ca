"""Time one ReST-EM M-step (the policy's loss forward + backward over a round), inner loop stubbed out.

The inner-loop rewards are replaced by seeded random gains, so only the policy's own work is timed: the sum of
`compute_loss` and `backward` over every micro-batch of the run (generation excluded). Run it on two checkouts
to compare them, e.g. before and after a change to the M-step:

    PYTHONPATH=. python benchmarks/m_step.py --model embedded      # SmolLM2-135M, 8 passages x 5 self-edits
    PYTHONPATH=. python benchmarks/m_step.py --model tiny          # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded | tiny | a model path")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="num_iterations: M-step epochs over the round")
    p.add_argument("--max-completion-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from seal_trl.config import SEALConfig
    from seal_trl.inner import InnerResult
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled
    from seal_trl.trainer import SEALTrainer

    tmp = tempfile.mkdtemp()
    if args.model == "tiny":
        from seal_trl.testing import save_tiny_model

        model_path = str(save_tiny_model(tmp + "/tiny"))
    elif args.model == "embedded":
        from seal_trl.models import embedded_model_path

        model_path = str(embedded_model_path())
    else:
        model_path = args.model
    from seal_trl.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    task = KnowledgeTask()
    dataset = task.build_dataset(load_bundled("train")[: args.contexts], tokenizer)
    batch = args.contexts * args.generations
    config = SEALConfig(output_dir=tmp + "/out", max_steps=args.epochs, num_iterations=args.epochs,
                        per_device_train_batch_size=batch, num_generations=args.generations,
                        max_completion_length=args.max_completion_length, use_cpu=True, report_to=[],
                        save_strategy="no", seed=args.seed, inner_epochs=1, inner_lora_r=4, inner_lora_alpha=8,
                        inner_target_modules=["q_proj", "v_proj"])
    trainer = SEALTrainer(model_path, args=config, train_dataset=dataset, processing_class=tokenizer, task=task)
    gains = torch.Generator().manual_seed(args.seed)

    def stub(contexts, self_edits):
        rewards = torch.randn(len(self_edits), generator=gains).tolist()
        return [(r, [InnerResult(score_before=0.0, score_after=r, reward=r)], None) for r in rewards]

    trainer.seal_reward.score_many = stub
    trainer._sync_inner_loop = lambda: None
    spent = {"loss": 0.0, "backward": 0.0}
    compute_loss, backward = trainer.compute_loss, trainer.accelerator.backward

    def timed(store, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[store] += time.perf_counter() - t0
            return out
        return wrapper

    trainer.compute_loss = timed("loss", compute_loss)
    trainer.accelerator.backward = timed("backward", backward)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    kept = [h["seal/keep_fraction"] for h in trainer.state.log_history if "seal/keep_fraction" in h]
    print(json.dumps({"model": args.model, "completions": batch, "epochs": args.epochs,
                      "keep_fraction": kept[0] if kept else None,
                      "m_step_seconds": round(spent["loss"] + spent["backward"], 2),
                      "loss_seconds": round(spent["loss"], 2), "backward_seconds": round(spent["backward"], 2),
                      "run_seconds": round(total, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
