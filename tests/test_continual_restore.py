"""A continual run directory lost with its machine, rebuilt from the JSON its report wrote (`--restore-from`): the
report from the rebuilt directory is the report from the original, an arm stopped early is left to rerun, and a
restore never overwrites a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "continual.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
SETTINGS = ("--model", "tiny", "--documents", "2", "--epochs", "1", "--jobs", "1", "--threads", "1", "--no-append")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("continual") / "run"
    done = _run(*SETTINGS, "--out", str(out), "--arms", "naive")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def test_a_restored_run_reports_what_the_original_reported(finished_run, tmp_path):
    from continual import PINNED

    results = json.loads((finished_run / "continual_results.json").read_text())
    assert set(results["pinned"]) == set(PINNED)
    restored = tmp_path / "restored"
    done = _run(*SETTINGS, "--out", str(restored), "--arms", "naive", "--report-only",
                "--restore-from", str(finished_run / "continual_results.json"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in (*PINNED, "run.json", "self_edits.json", "arm-naive.json"):
        assert json.loads((restored / name).read_text()) == json.loads((finished_run / name).read_text()), name
    again = json.loads((restored / "continual_results.json").read_text())
    assert again["summary"] == results["summary"] and again["pinned"] == results["pinned"]


def test_an_arm_stopped_early_is_not_restored_and_a_missing_registry_is_refused(finished_run, tmp_path):
    from continual import restore_run

    results = json.loads((finished_run / "continual_results.json").read_text())
    partial = {**results["arms"]["naive"], "arm": "reject", "steps": results["arms"]["naive"]["steps"][:1]}
    partial.pop("done", None)
    source = tmp_path / "results.json"
    source.write_text(json.dumps({**results, "partial_arms": {"reject": partial}}))
    notes = restore_run(source, tmp_path / "restored")
    assert notes == ["reject: stopped after 1 of 2 documents when reported; its registry is not in the JSON, so it "
                     "reruns from scratch"]
    assert not (tmp_path / "restored" / "arm-reject.json").exists()
    # the same record copied by hand: the worker refuses rather than resume onto an empty registry
    (tmp_path / "restored" / "arm-reject.json").write_text(json.dumps(partial))
    done = _run(*SETTINGS, "--out", str(tmp_path / "restored"), "--arms", "reject")
    assert done.returncode != 0
    log = (tmp_path / "restored" / "arm-reject.log").read_text()
    assert "has 1 steps but" in log and "registry-reject is missing" in log and "delete" in log


def test_a_restore_never_overwrites_and_needs_a_json_that_carries_the_run(finished_run, tmp_path):
    from continual import restore_run

    source = finished_run / "continual_results.json"
    with pytest.raises(SystemExit, match="is not empty"):
        restore_run(source, finished_run)
    assert json.loads((finished_run / "arm-naive.json").read_text())["done"] is True
    older = tmp_path / "older.json"
    older.write_text(json.dumps({k: v for k, v in json.loads(source.read_text()).items() if k != "pinned"}))
    with pytest.raises(SystemExit, match="has no pinned"):
        restore_run(older, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match="cannot read it"):
        restore_run(tmp_path / "broken.json", tmp_path / "empty")
    results = json.loads(source.read_text())
    naive = results["arms"]["naive"]
    hostile = {"a list": [], "arms as a list": {**results, "arms": [naive]},
               "a pinned file missing": {**results, "pinned": {"documents.json": []}},
               "settings missing": {**results, "run": {}, "partial_arms": {"reject": naive}},
               "an arm named like a path": {**results, "arms": {"../../naive": naive}},
               "an unfinished arm among the finished": {**results, "arms": {"naive": {**naive, "done": False}}}}
    for what, data in hostile.items():
        (tmp_path / "hostile.json").write_text(json.dumps(data))
        with pytest.raises(SystemExit, match="--restore-from .*hostile.json: "):
            restore_run(tmp_path / "hostile.json", tmp_path / "empty")
        assert not (tmp_path / "empty").exists(), what
