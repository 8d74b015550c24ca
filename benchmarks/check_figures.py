"""No figure lost: every number with a decimal point or a % that a Markdown file shows (default: README.md as it
was on `main`) must appear in docs/results.md or in a dated log file under benchmarks/log/. Prints the leftovers
with their line, exit 1 if any. Not part of the test suite (the old README is read from git).

    python benchmarks/check_figures.py [--rev main] [--file README.md]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 1.5, -0.534, +3.521, 1,032.5, 17.6 GB's 17.6, 45%, 2.4x's 2.4, 4.05e-4, 8e-6
FIGURE = re.compile(r"(?<![\d.])[-+]?(?:\d[\d,]*\.\d+(?:e-?\d+)?%?|\d+e-\d+|\d[\d,]*%)(?!\.?\d)")
# Numbers with a decimal point that are not measured figures: identifiers and versions.
NOT_FIGURES = {
    "2506.10943": "the paper's arXiv id",
    "3.10": "a Python version (Python >= 3.10)",
    "3.12": "a Python version (wheels for Python 3.12)",
    "1e-6": "a setting's value (PlanBounds.min_learning_rate)",
}


def figures(text: str) -> set[str]:
    found = set()
    for match in FIGURE.finditer(text):
        figure = match.group().lstrip("+-")
        if figure not in NOT_FIGURES:
            found.add(figure)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="git revision to read the old file from")
    parser.add_argument("--file", default="README.md", help="the file whose figures must not be lost")
    args = parser.parse_args()
    old = subprocess.run(["git", "show", f"{args.rev}:{args.file}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    kept = (ROOT / "docs" / "results.md").read_text()
    kept += "".join(path.read_text() for path in sorted((ROOT / "benchmarks" / "log").glob("*.md")))
    have = figures(kept)
    missing = 0
    for number, line in enumerate(old.splitlines(), 1):
        lost = sorted(figures(line) - have)
        if lost:
            missing += len(lost)
            print(f"{args.file}:{number}: {', '.join(lost)}: {line.strip()[:100]}")
    print(f"{missing} figure(s) of {args.rev}:{args.file} in neither docs/results.md nor benchmarks/log/")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
