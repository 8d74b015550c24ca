"""benchmarks/copied_share.py: copied shares and the split paired comparison, from a constructed state."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import copied_share  # noqa: E402

PASSAGES = {f"p{i}": f"passage {i} " + " ".join(f"word{i}x{j}" for j in range(12)) for i in range(4)}


def state(edits, method_scores, reference_scores):
    ids = list(PASSAGES)
    return {"details": {"contexts": ids, "self_edits": {"policy": [[e] for e in edits]}},
            "scores": {"policy": method_scores, "passage": reference_scores}}


def test_copies_and_own_words_are_compared_apart():
    own = "completely different text in the policy's own words here"
    edits = [PASSAGES["p0"], PASSAGES["p1"], own, own]
    lines = copied_share.describe(state(edits, [1.0, 2.0, 0.0, 1.0], [0.5, 1.5, 1.0, 2.0]), PASSAGES, "passage")
    row = lines[2]
    assert row.startswith("| policy | 0.50 | 2 | 2 |")
    assert "| 2, +0.500 [+0.500, +0.500] |" in row  # the two copies: +0.5 each
    assert "| 2, -1.000 [-1.000, -1.000] |" in row  # the two own-words self-edits: -1 each


def test_a_missing_reference_or_passage_is_a_clear_error():
    s = state([PASSAGES["p0"]] * 4, [0.0] * 4, [0.0] * 4)
    with pytest.raises(SystemExit, match="--reference passage-matched: not in the state"):
        copied_share.describe(s, PASSAGES, "passage-matched")
    with pytest.raises(SystemExit, match="4 of the state's passages are not in the data"):
        copied_share.describe(s, {}, "passage")
