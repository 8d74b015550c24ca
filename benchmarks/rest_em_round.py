"""One ReST-EM round (or a few GRPO steps) of SEALTrainer on the embedded model with the bundled data, on CPU.

Reports wall time, keep fraction, mean gain of kept vs all self-edits, and the mean inner-loop gain of the
policy's greedy self-edits on held-out validation passages before and after training. Appends to benchmarks/log/.

    python benchmarks/rest_em_round.py --algorithm rest_em --contexts 8 --generations 4
    python benchmarks/rest_em_round.py --algorithm grpo --contexts 4 --generations 4 --steps 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="rest_em", choices=["rest_em", "grpo"])
    parser.add_argument("--contexts", type=int, default=8, help="training passages in the round")
    parser.add_argument("--generations", type=int, default=4, help="self-edits per passage")
    parser.add_argument("--validation", type=int, default=6, help="held-out passages")
    parser.add_argument("--inner-epochs", type=int, default=5)
    parser.add_argument("--max-completion-length", type=int, default=160)
    parser.add_argument("--m-step-epochs", type=int, default=2, help="ReST-EM: num_iterations over the round")
    parser.add_argument("--steps", type=int, default=2, help="GRPO: optimizer steps")
    parser.add_argument("--output-dir", default="/tmp/seal-trl-round")
    args = parser.parse_args()

    from peft import LoraConfig

    from seal_trl.config import SEALConfig
    from seal_trl.evaluation import generate_self_edits, score_self_edits
    from seal_trl.models import embedded_model_path, load_tokenizer
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled
    from seal_trl.trainer import SEALTrainer
    from results_file import append_section, utc_stamp

    path = str(embedded_model_path())
    tokenizer = load_tokenizer(path)
    task = KnowledgeTask()
    train = load_bundled("train")[: args.contexts]
    validation = load_bundled("validation")[: args.validation]
    dataset = task.build_dataset(train, tokenizer)
    batch = args.contexts * args.generations
    per_device = min(8, batch)
    steps_per_generation = batch // per_device
    max_steps = steps_per_generation * args.m_step_epochs if args.algorithm == "rest_em" else args.steps
    config = SEALConfig(
        output_dir=args.output_dir, algorithm=args.algorithm, use_cpu=True, report_to=[], save_strategy="no",
        per_device_train_batch_size=per_device, steps_per_generation=steps_per_generation,
        num_generations=args.generations, num_iterations=args.m_step_epochs if args.algorithm == "rest_em" else 1,
        max_steps=max_steps, max_completion_length=args.max_completion_length, temperature=1.0,
        inner_epochs=args.inner_epochs, seed=0, logging_steps=1, log_completions=False,
    )
    peft = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    trainer = SEALTrainer(path, args=config, train_dataset=dataset, processing_class=tokenizer, task=task,
                          peft_config=peft)

    def validate(label: str):
        t0 = time.perf_counter()
        trainer.model.eval()
        edits = generate_self_edits(trainer.model, tokenizer, task, validation, max_new_tokens=args.max_completion_length)
        trainer._sync_inner_loop()
        ev = score_self_edits(trainer.inner_loop, task, validation, edits, seed=1)
        print(f"validation {label}: mean gain {ev.mean_gain:+.4f}, failures {ev.failure_rate:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return ev

    before = validate("before")
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    after = validate("after")

    logs = [h for h in trainer.state.log_history if "seal/gain_mean" in h]
    gen = logs[0]
    stamp = utc_stamp()
    lines = [
        f"\n## SEALTrainer {args.algorithm} on the embedded SmolLM2-135M, bundled data, CPU ({stamp})\n",
        f"`python benchmarks/rest_em_round.py --algorithm {args.algorithm} --contexts {args.contexts} --generations "
        f"{args.generations} --validation {args.validation} --inner-epochs {args.inner_epochs}`: "
        f"{args.contexts} train passages x {args.generations} self-edits (implications prompt, temperature 1, "
        f"<= {args.max_completion_length} tokens), policy LoRA r=32 on attention, inner loop LoRA r=32 on all "
        f"projections, {args.inner_epochs} inner epochs, log-likelihood grader, {max_steps} optimizer steps.\n",
        "| measure | value |", "|---|---:|",
        f"| training wall time (s) | {train_seconds:.0f} |",
        f"| self-edits scored | {batch * len(logs) if args.algorithm == 'grpo' else batch} |",
        f"| mean gain, all self-edits (first generation batch) | {gen['seal/gain_mean']:+.4f} |",
    ]
    if args.algorithm == "rest_em":
        lines += [f"| keep fraction | {gen['seal/keep_fraction']:.3f} |",
                  f"| mean gain, kept self-edits | {gen['seal/gain_kept_mean']:+.4f} |"]
    lines += [
        f"| inner-loop failure rate | {gen.get('inner/failure_rate', float('nan')):.3f} |",
        f"| inner seconds per run | {gen.get('inner/seconds_per_run', float('nan')):.1f} |",
        f"| validation: mean gain of greedy self-edits before | {before.mean_gain:+.4f} |",
        f"| validation: mean gain of greedy self-edits after | {after.mean_gain:+.4f} |",
        f"| validation: failure rate before / after | {before.failure_rate:.2f} / {after.failure_rate:.2f} |",
    ]
    append_section(lines)


if __name__ == "__main__":
    main()
