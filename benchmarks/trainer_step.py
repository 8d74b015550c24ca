"""One SEALTrainer round (generate, inner-loop rewards, one ReST-EM M-step) on a model directory, timed.

The GPU check runs it in bf16 on CUDA on a randomly initialised model with a real model's shapes; its CPU dry
run in fp32. Prints one `RESULT {json}` line (phase times, rewards, peak memory).

    python benchmarks/trainer_step.py --model /tmp/smollm2-random --bf16          # on a GPU
    python benchmarks/trainer_step.py --model /tmp/smollm2-random-2l --cpu       # dry run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bf16", action="store_true", help="bf16 policy and inner loop (needs a GPU)")
    parser.add_argument("--cpu", action="store_true", help="use_cpu: the dry run")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--self-edits", type=int, default=4)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from seal_trl.config import SEALConfig
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled
    from seal_trl.trainer import SEALTrainer

    cuda = torch.cuda.is_available() and not args.cpu
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    contexts = load_bundled("train")[: args.passages]
    dataset = KnowledgeTask(chat=bool(tokenizer.chat_template)).build_dataset(contexts, tokenizer)
    batch = args.passages * args.self_edits
    with tempfile.TemporaryDirectory() as out:
        config = SEALConfig(output_dir=out, algorithm="rest_em", max_steps=1, per_device_train_batch_size=batch,
                            num_generations=args.self_edits, max_completion_length=64, use_cpu=not cuda,
                            bf16=args.bf16, report_to=[], save_strategy="no", seed=0, learning_rate=1e-4,
                            inner_epochs=2, inner_lora_r=16, inner_lora_alpha=32,
                            inner_batch_self_edits=4 if cuda else 1, logging_steps=1)
        trainer = SEALTrainer(args.model, args=config, train_dataset=dataset, processing_class=tokenizer)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        results = trainer.seal_reward.last_results
        rewards = [r[0].reward for r in results]
        failed = sum(not r[0].ok for r in results)
        policy_dtype = str(next(trainer.model.parameters()).dtype)
        inner_dtype = str(next(trainer.inner_loop.model.parameters()).dtype)
    if failed == len(rewards):
        raise SystemExit(f"every inner run failed: {[r[0].error_message for r in results][:3]}")
    out = {"model": args.model, "device": "cuda" if cuda else "cpu", "bf16": args.bf16, "seconds": round(seconds, 2),
           "self_edits": len(rewards), "failed": failed, "mean_reward": sum(rewards) / len(rewards),
           "policy_dtype": policy_dtype, "inner_dtype": inner_dtype,
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}
    print("RESULT " + json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
