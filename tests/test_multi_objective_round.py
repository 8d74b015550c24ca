"""benchmarks/multi_objective_round.py: its arguments and its paired report (no model; the run itself is the
benchmark's, smoke-run with --model tiny)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from multi_objective_round import parse_args, report  # noqa: E402


def scores():
    # 3 training passages x 2 samples; the gain rule keeps row 1 (passage 0), 2 (passage 1), 5 (passage 2);
    # the multi rule keeps 0, 2 and nothing on passage 2
    return {
        "estep": {"gain": [[0.1, 0.4], [0.3, -0.1], [0.0, 0.2]], "forgetting": [[0.01, 0.2], [-0.02, 0.0], [0.0, 0.3]],
                  "run_seconds": [[10.0, 12.0], [0.0, 14.0], [12.0, 12.0]]},
        "mstep": {"gain": {"kept_rows": [1, 2, 5]}, "multi": {"kept_rows": [0, 2]}},
        "validation": {"gain": {"gain": [0.5, 0.2, 0.1, 0.0], "forgetting": [0.10, 0.20, 0.05, 0.0],
                                "error": [None, None, None, "empty"], "run_seconds": [9.0, 9.0, 9.0, 0.0]},
                       "multi": {"gain": [0.4, 0.3, 0.1, 0.0], "forgetting": [0.02, 0.10, 0.01, 0.0],
                                 "error": [None, None, None, "empty"], "run_seconds": [9.0, 9.0, 9.0, 0.0]}},
        "wall_s": {"estep_scoring": 60.0, "validation_gain": 30.0, "validation_multi": 30.0},
    }


def test_the_report_pairs_multi_against_gain_per_validation_passage():
    args = parse_args(["--passages", "3", "--samples", "2", "--validation", "4"])
    text = "\n".join(report(args, scores(), ["a", "b", "c", "d"], "abc1234"))
    assert "kept: gain 3 / 3 passages, multi 2 / 3; the same self-edit (or none) kept on 1 of 3 passages" in text
    assert "share of self-edits that forgot: 3 / 6" in text
    # gain: multi - gain per passage = -0.1, +0.1, 0, 0 -> mean 0, 1 above / 1 below
    assert "| gain (higher is better) | +0.2000 | +0.2000 | +0.0000 [" in text and "| 1 / 1 | 4 |" in text
    # forgetting: -0.08, -0.10, -0.04, 0 -> mean -0.055, 0 above / 3 below
    assert "| forgetting (lower is better) | +0.0875 | +0.0325 | -0.0550 [" in text and "| 0 / 3 | 4 |" in text
    assert "Failed validation self-edits (gain 0, forgetting 0): gain 1, multi 1. 11 inner runs here, 10.4 s a run" in text


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--forgetting-weight", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--samples", "0"])
    assert parse_args([]).model == "embedded"
