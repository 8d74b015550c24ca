"""Would ReST-EM keep anything at the paper's 10 inner epochs? The base policy's sampled self-edits, scored against
the compute-matched passage (the passage repeated to their training tokens: `reward_baseline: passage-matched`)
with several inner-epoch counts: the same samples, contexts and seeds at each count.

The E-step of a ReST-EM round with that reward keeps, per passage, the best of its samples when its reward is above
the margin (0). This measures, without training a policy, how many passages would have something to keep and how
much the kept self-edits beat their matched passage by, at 3 inner epochs (the CPU recipe) and at 10 (the paper),
and whether the two agree on which sample is best.

    PYTHONPATH=. python benchmarks/reward_epochs.py --passages 16 --samples 5 --epochs 3 10

Every inner run is kept in OUTPUT_DIR/store (by content), and the samples in OUTPUT_DIR/samples.json, so a killed
run restarted with the same command recomputes nothing it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_file import append_section, commit, utc_stamp  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=16, help="the first N bundled training passages")
    p.add_argument("--samples", type=int, default=5, help="self-edits sampled per passage (T=1), as in the E-step")
    p.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--style", default="implications")
    p.add_argument("--batch-self-edits", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/reward-epochs")
    p.add_argument("--no-append", action="store_true", help="do not append to the day's log in benchmarks/log/")
    args = p.parse_args()

    from seal_trl.continual.registry import atomic_write_bytes
    from seal_trl.generation import generate_texts
    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.models import load_policy
    from seal_trl.reward import SelfEditReward
    from seal_trl.seeding import context_key, derive_seed
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_contexts

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    contexts = load_contexts("bundled", split="train", limit=args.passages)
    path, policy, tokenizer = load_policy(None, None)
    task = KnowledgeTask(style=args.style, chat=bool(getattr(tokenizer, "chat_template", None)))

    samples_path = out / "samples.json"
    wanted = {"passages": [context_key(c) for c in contexts], "samples": args.samples, "style": args.style,
              "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    saved = json.loads(samples_path.read_text()) if samples_path.exists() else None
    # each passage's samples are seeded by its own content, so a run over more passages keeps the earlier ones
    done = 0 if saved is None else len(saved["settings"]["passages"])
    if saved is not None and ({**saved["settings"], "passages": wanted["passages"][:done]}
                              != {**wanted, "passages": wanted["passages"][:done]} or done > len(contexts)):
        sys.exit(f"{samples_path} holds samples for other settings: remove it or pass another --output-dir")
    if done < len(contexts):
        start = time.perf_counter()
        new = [generate_texts(policy, tokenizer, task.prompt(c), n=args.samples, max_new_tokens=args.max_new_tokens,
                              temperature=1.0, seed=derive_seed(args.seed, context_key(c))) for c in contexts[done:]]
        earlier = saved or {"edits": [], "wall_s": 0.0}
        saved = {"settings": wanted, "edits": earlier["edits"] + new,
                 "wall_s": round(earlier["wall_s"] + time.perf_counter() - start, 1)}
        atomic_write_bytes(samples_path, json.dumps(saved).encode())
    edits = saved["edits"]
    del policy

    flat_contexts = [c for c in contexts for _ in range(args.samples)]
    flat_edits = [e for per in edits for e in per]
    rewards: dict[int, list[list[float]]] = {}
    failed: dict[int, int] = {}
    wall: dict[int, float] = {}
    for epochs in args.epochs:
        config = InnerLoopConfig(num_epochs=epochs, learning_rate=1e-3, lora_r=32, lora_alpha=64, grader="loglik",
                                 seed=args.seed, batch_self_edits=args.batch_self_edits)
        inner = InnerLoop.from_pretrained(path, config)
        reward = SelfEditReward(task, inner, seed=args.seed, baseline="passage-matched", store=out / "store")
        start = time.perf_counter()
        scored = reward.score_many(flat_contexts, flat_edits)
        wall[epochs] = round(time.perf_counter() - start, 1)
        values = [r for r, _, _ in scored]
        failed[epochs] = sum(err is not None for _, _, err in scored)
        rewards[epochs] = [values[i * args.samples:(i + 1) * args.samples] for i in range(len(contexts))]
        print(f"{epochs} epochs: mean reward {sum(values) / len(values):+.4f}, {wall[epochs]:.0f} s", flush=True)
        del inner, reward

    lines = report(args, rewards, failed, wall, saved["wall_s"], commit())
    atomic_write_bytes(out / "report.json", json.dumps({"rewards": rewards, "failed": failed, "wall_s": wall,
                                                        "edits": edits}).encode())
    if args.no_append:
        print("\n".join(lines))
    else:
        append_section(lines)


def report(args, rewards: dict[int, list[list[float]]], failed: dict[int, int], wall: dict[int, float],
           generation_s: float, code: str) -> list[str]:
    """The section: per epoch count, what the E-step would keep; then each count paired with the first."""
    import numpy as np

    from seal_trl.stats import paired_comparison

    n = len(next(iter(rewards.values())))
    lines = [f"## Would ReST-EM keep anything at E inner epochs? The base policy's samples against the compute-matched "
             f"passage ({utc_stamp()})", "",
             f"`PYTHONPATH=. python benchmarks/reward_epochs.py --passages {args.passages} --samples {args.samples} "
             f"--epochs {' '.join(map(str, args.epochs))}` (commit {code}): the first {n} bundled training passages, "
             f"{args.samples} self-edits each sampled from the base model (T=1, {args.style} prompt, at most "
             f"{args.max_new_tokens} tokens; {generation_s:.0f} s), each scored with `reward_baseline: "
             f"passage-matched` (inner loop lr 1e-3, LoRA r=32 alpha 64, loglik grader, K={args.batch_self_edits} "
             "slots). Kept: the best sample of a passage when its reward is above 0 (ReST-EM, margin 0, top-1).", "",
             "| inner epochs | mean reward | samples above 0 | passages kept | mean reward of the kept | "
             "failed | wall |", "|---:|---:|---:|---:|---:|---:|---:|"]
    best = {}
    for epochs, per in rewards.items():
        flat = [r for row in per for r in row]
        best[epochs] = [max(row) for row in per]
        kept = [b for b in best[epochs] if b > 0]
        lines.append(f"| {epochs} | {np.mean(flat):+.3f} | {sum(r > 0 for r in flat)} / {len(flat)} | {len(kept)} / "
                     f"{n} | {np.mean(kept) if kept else float('nan'):+.3f} | {failed[epochs]} | "
                     f"{wall[epochs] / 60:.1f} min |")
    first = args.epochs[0]
    for epochs in args.epochs[1:]:
        s = paired_comparison(best[epochs], best[first], seed=args.seed)
        same = sum(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(rewards[epochs], rewards[first]))
        corr = np.corrcoef([r for row in rewards[epochs] for r in row],
                           [r for row in rewards[first] for r in row])[0, 1]
        lines += ["", f"{epochs} against {first} epochs, per passage: best sample's reward {s.mean_difference:+.3f} "
                  f"[{s.ci_low:+.3f}, {s.ci_high:+.3f}], {s.wins}/{s.losses} (n {s.n}); the same sample is best on "
                  f"{same} of {n} passages; correlation of the {n * args.samples} samples' rewards {corr:+.2f}."]
    return lines + [""]


if __name__ == "__main__":
    main()
