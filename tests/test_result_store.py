"""Finished inner runs persist by content: a run killed mid E-step and restarted recomputes none of them."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seal_trl.inner import InnerResult
from seal_trl.inner.store import ResultStore, run_key

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "store_worker.py"


def key(**changes):
    fields = dict(policy="p", context="c", self_edit="text", settings={"lr": 1e-3}, seed=1)
    return run_key(**{**fields, **changes})


def test_the_key_covers_everything_a_result_depends_on():
    base = key()
    assert base == key()
    for change in ({"policy": "q"}, {"context": "d"}, {"self_edit": "text "}, {"settings": {"lr": 2e-3}},
                   {"seed": 2}):
        assert key(**change) != base, change


def test_results_round_trip_and_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "runs.jsonl"
    store = ResultStore(path)
    first = InnerResult(score_before=-3.0, score_after=-2.5, reward=0.5, losses=[1.0, 0.5], steps=2, seed=7)
    store.put("a", first)
    with path.open("a") as fh:
        fh.write('{"key": "b", "result": {"score_bef')  # killed while writing
    reopened = ResultStore(path)
    assert len(reopened) == 1 and reopened.get("a") == first and reopened.get("b") is None
    reopened.put("c", InnerResult(score_before=0.0, score_after=None, reward=0.0, error="empty"))
    again = ResultStore(path)
    assert len(again) == 2 and again.get("c").error == "empty"  # the new line did not join the torn one


def run_worker(tiny_model_dir, store, out, kill_after):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(WORKER), str(tiny_model_dir), str(store), str(out), str(kill_after)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_a_killed_scoring_resumes_without_recomputing_finished_runs(tiny_model_dir, tmp_path):
    # 3 contexts x 3 self-edits x 2 repeats = 18 inner runs; kill -9 after the 7th has been written
    killed = run_worker(tiny_model_dir, tmp_path / "store.jsonl", tmp_path / "killed.json", 7)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(ResultStore(tmp_path / "store.jsonl")) == 7
    resumed = run_worker(tiny_model_dir, tmp_path / "store.jsonl", tmp_path / "resumed.json", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    fresh = run_worker(tiny_model_dir, tmp_path / "fresh.jsonl", tmp_path / "fresh.json", 0)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    resumed, fresh = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("resumed", "fresh"))
    assert resumed["runs"] == 18 - 7 and resumed["hits"] == 7  # none of the finished runs was recomputed
    assert fresh["runs"] == 18 and fresh["hits"] == 0
    assert resumed["rewards"] == fresh["rewards"]


GOOD = {"score_before": -3.0, "score_after": -2.5, "reward": 0.5, "losses": [1.0, 0.5], "steps": 2, "seed": 7}
DAMAGED_LINES = {
    "result-a-list": '{"key": "bad", "result": [1]}',
    "result-a-string": '{"key": "bad", "result": "ok"}',
    "result-missing": '{"key": "bad"}',
    "line-a-list": "[1, 2]",
    "line-a-number": "5",
    "key-an-int": json.dumps({"key": 5, "result": GOOD}),
    "losses-an-int": json.dumps({"key": "bad", "result": {**GOOD, "losses": 5}}),
    "losses-strings": json.dumps({"key": "bad", "result": {**GOOD, "losses": ["1.0"]}}),
    "nested-100k": '{"key": "bad", "result": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "reward-nan": '{"key": "bad", "result": {"score_before": 0.0, "score_after": 1.0, "reward": NaN}}',
    "score-infinity": '{"key": "bad", "result": {"score_before": -Infinity, "score_after": 1.0, "reward": 0.5}}',
    "loss-nan": json.dumps({"key": "bad", "result": {**GOOD, "losses": [float("nan")]}}),
    "reward-a-string": json.dumps({"key": "bad", "result": {**GOOD, "reward": "0.5"}}),
    "reward-missing": json.dumps({"key": "bad", "result": {"score_before": 0.0, "score_after": 1.0}}),
    "steps-a-bool": json.dumps({"key": "bad", "result": {**GOOD, "steps": True}}),
    "steps-a-float": json.dumps({"key": "bad", "result": {**GOOD, "steps": 2.5}}),
    "error-unknown": json.dumps({"key": "bad", "result": {**GOOD, "error": "rm -rf"}}),
    "5000-digit-int": '{"key": "bad", "result": {"score_before": 0.0, "score_after": null, "reward": 0.0, '
                      f'"seed": {"1" * 5000}}}}}',
    "not-utf8": b'{"key": "bad", "result": {"score_before": 0.0, "score_after": null, "reward": 0.0, "error": "\xff"}}',
    "nul-bytes": "\x00" * 40,
}


@pytest.mark.parametrize("damage", list(DAMAGED_LINES))
def test_a_damaged_line_is_skipped_counted_once_and_recomputed(tmp_path, damage, caplog):
    path = tmp_path / "runs.jsonl"
    good = InnerResult(**GOOD)
    ResultStore(path).put("a", good)
    line = DAMAGED_LINES[damage]
    with path.open("ab") as fh:
        fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    ResultStore(path).put("c", good)  # a good line after the damaged one still loads
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seal_trl.inner.store"):
        store = ResultStore(path)  # opens: `train` starts
    assert len(store) == 2 and store.get("a") == good and store.get("c") == good
    assert store.get("bad") is None  # not trusted: the run is recomputed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "skipped 1 line" in warnings[0], warnings
    store.put("bad", good)  # the recomputed result is kept from now on
    assert ResultStore(path).get("bad") == good


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_a_store_path_that_is_not_a_file_is_refused_before_reading(tmp_path, kind):
    from seal_trl.safe_json import JSONFileError

    path = tmp_path / "runs.jsonl"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")  # a read that never ends
    with pytest.raises(JSONFileError, match="runs.jsonl.*must be a JSON-lines file"):
        ResultStore(path)
