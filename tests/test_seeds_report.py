"""benchmarks/seeds.py: per-seed paired differences and their mean over seeds, from constructed states."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seeds  # noqa: E402

CONTEXTS = ["p0", "p1", "p2", "p3"]


def state(policy, reference, contexts=CONTEXTS):
    return {"details": {"contexts": list(contexts)}, "scores": {"policy": policy, "passage-matched": reference}}


def test_each_seed_against_its_own_reference_and_the_mean_over_seeds():
    # seed A: +1 on every passage; seed B: -0.5 on every passage against its own (different) reference
    a = state([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])
    b = state([0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5])
    lines = seeds.describe([("run 1", a, "policy"), ("run 2", b, "policy")], ["passage-matched"])
    assert lines[2] == "| run 1 (policy) | +1.000 [+1.000, +1.000], 4/0 |"
    assert lines[3] == "| run 2 (policy) | -0.500 [-0.500, -0.500], 0/4 |"
    assert lines[4] == "| mean over 2 seeds | +0.250 [+0.250, +0.250], 4/0 |"
    assert lines[5] == "| spread of the seed means | SD 1.061, range -0.500 to +1.000 |"


def test_a_passage_missing_in_one_seed_is_dropped_from_the_mean():
    a = state([1.0, 1.0, 1.0, 9.0], [0.0] * 4)
    b = state([1.0, 1.0, 1.0, None], [0.0] * 4)
    lines = seeds.describe([("run 1", a, "policy"), ("run 2", b, "policy")], ["passage-matched"])
    assert lines[4] == "| mean over 2 seeds | +1.000 [+1.000, +1.000], 3/0 |"


def test_bad_runs_are_clear_errors(tmp_path):
    a = state([0.0] * 4, [0.0] * 4)
    with pytest.raises(SystemExit, match="passages differ from run 1's"):
        seeds.describe([("run 1", a, "policy"), ("run 2", state([0.0] * 4, [0.0] * 4, CONTEXTS[::-1]), "policy")],
                       ["passage-matched"])
    with pytest.raises(SystemExit, match="run 2: no method 'seal' in the state"):
        seeds.describe([("run 1", a, "policy"), ("run 2", a, "seal")], ["passage-matched"])
    with pytest.raises(SystemExit, match="at least 2 seeds"):
        seeds.describe([("run 1", a, "policy")], ["passage-matched"])
    with pytest.raises(SystemExit, match="write it as STATE:METHOD"):
        seeds.main(["state.json"])
    path = tmp_path / "state.json"
    path.write_text(json.dumps(a))
    with pytest.raises(SystemExit, match="no state file at"):
        seeds.main([f"{tmp_path}/nope.json:policy", f"{path}:policy"])


def test_command_line_prints_the_table(tmp_path, capsys):
    for name, policy in (("a", [1.0] * 4), ("b", [3.0] * 4)):
        (tmp_path / f"{name}.json").write_text(json.dumps(state(policy, [0.0] * 4)))
    seeds.main([f"{tmp_path}/a.json:policy", f"{tmp_path}/b.json:policy", "--reference", "passage-matched"])
    out = capsys.readouterr().out
    assert "| mean over 2 seeds | +2.000 [+2.000, +2.000], 4/0 |" in out
