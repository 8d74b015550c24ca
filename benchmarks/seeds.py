"""One setting trained with several seeds: each seed's policy against references, and the mean over seeds.

Each seed is a `seal_validation.py` state and the name of that seed's policy in it (`STATE:METHOD`). A reference is
read from the same state as the policy, so `passage-matched` is the passage matched to that seed's own tokens. Per
seed: the paired difference against each reference. Over seeds: per passage, the mean over seeds of the policy's
difference, with a bootstrap CI over passages (it describes these seeds; the seed-to-seed spread is reported beside
it, since a handful of seeds cannot give a CI of its own). Nothing is run: it only reads the states.

    python benchmarks/seeds.py runs/v0/state.json:seal-checkpoint-12 runs/v1/state.json:seal-seed1-checkpoint-12 \\
        --reference passage --reference passage-matched
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from seal_trl.stats import paired_comparison  # noqa: E402


def parse_run(text: str) -> tuple[str, str]:
    state, sep, method = text.rpartition(":")
    if not sep or not state or not method:
        raise SystemExit(f"run {text!r}: write it as STATE:METHOD (a state.json and the seed's policy in it)")
    return state, method


def differences(state: dict, method: str, reference: str, where: str) -> list[float | None]:
    """The policy minus the reference, per passage (None where either is missing)."""
    scores = state["scores"]
    for name in (method, reference):
        if name not in scores:
            raise SystemExit(f"{where}: no method {name!r} in the state; it has {sorted(scores)}")
    return [None if a is None or b is None else a - b for a, b in zip(scores[method], scores[reference])]


def _cell(stats) -> str:
    return (f"{stats.mean_difference:+.3f} [{stats.ci_low:+.3f}, {stats.ci_high:+.3f}], "
            f"{stats.wins}/{stats.losses}")


def describe(runs: list[tuple[str, dict, str]], references: list[str], seed: int = 0) -> list[str]:
    """Markdown rows: one per seed, then the mean over seeds and the spread of the seed means.

    `runs` holds (label, state, policy method) per seed; every state must score the same passages in the same order.
    """
    if len(runs) < 2:
        raise SystemExit(f"give at least 2 seeds (got {len(runs)}): one seed is the validation table itself")
    contexts = runs[0][1]["details"]["contexts"]
    for label, state, _ in runs[1:]:
        if state["details"]["contexts"] != contexts:
            raise SystemExit(f"{label}: its passages differ from {runs[0][0]}'s; every seed must be validated on "
                             "the same passages (same --limit and data)")
    lines = ["| run | " + " | ".join(f"vs {r}: diff [95% CI], W/L" for r in references) + " |",
             "|---|" + "---|" * len(references)]
    per_reference: dict[str, list[list[float | None]]] = {r: [] for r in references}
    for label, state, method in runs:
        cells = []
        for reference in references:
            diffs = differences(state, method, reference, label)
            per_reference[reference].append(diffs)
            cells.append(_cell(paired_comparison(diffs, [0.0] * len(diffs), seed=seed)))
        lines.append(f"| {label} ({method}) | " + " | ".join(cells) + " |")
    mean_cells, spread_cells = [], []
    for reference in references:
        seeds = per_reference[reference]
        averaged = [None if any(s[i] is None for s in seeds) else statistics.fmean(s[i] for s in seeds)
                    for i in range(len(contexts))]
        mean_cells.append(_cell(paired_comparison(averaged, [0.0] * len(averaged), seed=seed)))
        seed_means = [statistics.fmean(d for d in s if d is not None) for s in seeds]
        spread_cells.append(f"SD {statistics.stdev(seed_means):.3f}, range {min(seed_means):+.3f} to "
                            f"{max(seed_means):+.3f}")
    lines.append(f"| mean over {len(runs)} seeds | " + " | ".join(mean_cells) + " |")
    lines.append("| spread of the seed means | " + " | ".join(spread_cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="STATE:METHOD", help="a seed's validation state and its policy")
    parser.add_argument("--reference", action="append", dest="references",
                        help="a method in every state to pair against (repeatable; default passage and "
                             "passage-matched)")
    args = parser.parse_args(argv)
    runs = []
    for text in args.runs:
        path, method = parse_run(text)
        if not Path(path).is_file():
            raise SystemExit(f"run {text!r}: no state file at {path}")
        runs.append((f"run {len(runs) + 1}", json.loads(Path(path).read_text()), method))
    print("\n".join(describe(runs, args.references or ["passage", "passage-matched"])))


if __name__ == "__main__":
    main()
