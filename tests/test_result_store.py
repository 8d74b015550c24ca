"""Finished inner runs persist by content: a run killed mid E-step and restarted recomputes none of them."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
