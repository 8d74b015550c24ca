"""Does the inner loop learn what a self-edit says? Before/after probe scores for three plans.

On one invented passage (benchmarks/knowledge_example.py): (i) the passage alone, (ii) an implications-style
self-edit plus the passage, (iii) unrelated text of the same size. Scored by answer log-likelihood and by
greedy-answer token F1. Appends a table to the day's log, benchmarks/log/.

    python benchmarks/knowledge_gain.py --model embedded
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import knowledge_example as example  # noqa: E402
from inner_loop import model_path  # noqa: E402
from results_file import append_section, utc_stamp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.graders import AnswerMatchGrader

    path = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loop = InnerLoop(AutoModelForCausalLM.from_pretrained(path), tokenizer, InnerLoopConfig())
    f1 = AnswerMatchGrader("f1", max_new_tokens=16)
    probe = example.probe()
    plans = {
        "passage only": example.plan([], epochs=args.epochs),
        "implications + passage": example.plan(example.IMPLICATIONS, epochs=args.epochs),
        "unrelated text": example.plan(example.UNRELATED, with_passage=False, epochs=args.epochs),
    }
    f1_before = f1.score(loop.model, tokenizer, probe)
    rows = []
    for name, plan in plans.items():
        start = time.perf_counter()
        result = loop.run(plan, probe, seed=0)
        assert result.ok, result.error_message
        f1_after = f1.score(loop.model, tokenizer, probe)  # the adapter of this run is still in place
        rows.append((name, len(plan.examples), result, f1_after, f1.last_predictions, time.perf_counter() - start))
        print(f"{name}: loglik {result.score_before:.3f} -> {result.score_after:.3f}, F1 {f1_before:.2f} -> "
              f"{f1_after:.2f}, answers {f1.last_predictions}", flush=True)
    stamp = utc_stamp()
    lines = [
        f"\n## Knowledge gain on one invented passage: {args.model} model ({stamp})\n",
        f"`python benchmarks/knowledge_gain.py --model {args.model}`: passage \"{example.TITLE}\", "
        f"{len(example.QUESTIONS)} questions, InnerLoopConfig defaults (LoRA r=32/alpha=64 on all projections, "
        f"lr 1e-3, {args.epochs} epochs, batch 1). Log-likelihood = mean token log-prob of the gold answer; F1 = "
        "greedy answer (16 tokens, cut at newline) vs gold, SQuAD normalisation.\n",
        "| plan | examples | loglik before | loglik after | gain | F1 before | F1 after | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, r, f1_after, _, secs in rows:
        lines.append(f"| {name} | {n} | {r.score_before:.3f} | {r.score_after:.3f} | {r.reward:+.3f} | "
                     f"{f1_before:.2f} | {f1_after:.2f} | {secs:.0f} |")
    lines.append("\nGreedy answers after each plan:\n")
    for name, *_rest in rows:
        lines.append(f"- {name}: {_rest[3]}")
    append_section(lines)


if __name__ == "__main__":
    main()
