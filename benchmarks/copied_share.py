"""How much of each method's self-edits is the passage's own text, and what the copies and the rest score.

Reads a `seal_validation.py` state file (the greedy self-edits and per-passage scores of every method) and, for
each writing method, reports the mean share of its self-edits' 6-word sequences found verbatim in the passage
(`seal_trl.tasks.knowledge.copied_share`), how many self-edits are mostly copies (share > 0.8) or mostly their own
words (< 0.2), and the paired difference against a reference method separately for the self-edits that are more
than half copied and the rest. Nothing is run: it only reads the state.

    python benchmarks/copied_share.py runs/seal-validation/state.json --reference passage-matched
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from seal_trl.stats import paired_comparison  # noqa: E402
from seal_trl.tasks.knowledge import copied_share  # noqa: E402
from seal_trl.tasks.squad import load_contexts  # noqa: E402

COPY_SPLIT = 0.5  # a self-edit more than half copied counts as a copy in the split comparison


def passages_by_id(source: str, split: str) -> dict[str, str]:
    return {c["context_id"]: c["context"] for c in load_contexts(source, split=split)}


def describe(state: dict, passages: dict[str, str], reference: str, seed: int = 0) -> list[str]:
    """Markdown table rows, one per writing method in the state."""
    details = state["details"]
    ids, scores = details["contexts"], state["scores"]
    if reference not in scores:
        raise SystemExit(f"--reference {reference}: not in the state; it has {sorted(scores)}")
    missing = [cid for cid in ids if cid not in passages]
    if missing:
        raise SystemExit(f"{len(missing)} of the state's passages are not in the data (first: {missing[0]!r}); "
                         "pass the --data and --split the state was made from")
    lines = [f"| method | mean copied share | mostly copies (> 0.8) | mostly own words (< 0.2) | copies (> {COPY_SPLIT}) "
             f"vs {reference}: n, diff [95% CI] | the rest vs {reference}: n, diff [95% CI] |",
             "|---|---:|---:|---:|---|---|"]
    for method, edits in details["self_edits"].items():
        if method not in scores:
            continue
        shares = [sum(copied_share(e, passages[cid]) for e in per) / len(per) if per else 0.0
                  for cid, per in zip(ids, edits)]
        cells = []
        for keep in (lambda s: s > COPY_SPLIT, lambda s: s <= COPY_SPLIT):
            rows = [i for i, s in enumerate(shares) if keep(s)]
            if len(rows) < 2:
                cells.append(f"{len(rows)}")
                continue
            stats = paired_comparison([scores[method][i] for i in rows], [scores[reference][i] for i in rows],
                                      seed=seed)
            cells.append(f"{stats.n}, {stats.mean_difference:+.3f} [{stats.ci_low:+.3f}, {stats.ci_high:+.3f}]")
        lines.append(f"| {method} | {sum(shares) / len(shares):.2f} | {sum(s > 0.8 for s in shares)} | "
                     f"{sum(s < 0.2 for s in shares)} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state", help="a seal_validation.py state.json")
    parser.add_argument("--reference", default="passage-matched")
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args(argv)
    state = json.loads(Path(args.state).read_text())
    print("\n".join(describe(state, passages_by_id(args.data, args.split), args.reference)))


if __name__ == "__main__":
    main()
