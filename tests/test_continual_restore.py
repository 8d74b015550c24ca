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


def test_an_arm_stopped_early_is_restored_for_the_report_and_reruns_from_scratch(finished_run, tmp_path):
    from continual import restore_run

    results = json.loads((finished_run / "continual_results.json").read_text())
    partial = {**results["arms"]["naive"], "arm": "reject", "steps": results["arms"]["naive"]["steps"][:1]}
    partial.pop("done", None)
    source = tmp_path / "results.json"
    source.write_text(json.dumps({**results, "partial_arms": {"reject": partial}}))
    restored = tmp_path / "restored"
    notes = restore_run(source, restored)
    assert notes == ["reject: stopped after 1 of 2 documents when reported; restored for the report (--partial-arms), "
                     "and its registry is not in the JSON, so running it starts it from scratch"]
    assert json.loads((restored / "arm-reject.json").read_text())["restored_without_registry"] is True
    report = _run(*SETTINGS, "--out", str(restored), "--arms", "naive", "--report-only", "--partial-arms", "reject")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert json.loads((restored / "continual_results.json").read_text())["partial"]["reject"]
    # running it: from scratch, to the end
    done = _run(*SETTINGS, "--out", str(restored), "--arms", "reject")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "starting from scratch" in (restored / "arm-reject.log").read_text()
    record = json.loads((restored / "arm-reject.json").read_text())
    assert record["done"] is True and len(record["steps"]) == 2 and "restored_without_registry" not in record
    # the same partial record copied in by hand: the worker refuses rather than resume onto an empty registry
    (tmp_path / "copied").mkdir()
    restore_run(finished_run / "continual_results.json", tmp_path / "copied")
    (tmp_path / "copied" / "arm-reject.json").write_text(json.dumps(partial))
    done = _run(*SETTINGS, "--out", str(tmp_path / "copied"), "--arms", "reject")
    assert done.returncode != 0
    log = (tmp_path / "copied" / "arm-reject.log").read_text()
    assert "has 1 steps but" in log and "registry-reject is missing" in log and "delete" in log


def test_a_restore_never_overwrites_and_needs_a_json_that_carries_the_run(finished_run, tmp_path):
    from continual import restore_run

    source = finished_run / "continual_results.json"
    with pytest.raises(SystemExit, match="not empty"):
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
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SystemExit, match="cannot read it"):
        restore_run(tmp_path / "deep.json", tmp_path / "empty")
    results = json.loads(source.read_text())
    naive = results["arms"]["naive"]
    docs = results["pinned"]["documents.json"]
    swapped = [naive["steps"][1], naive["steps"][0]]
    hostile = {"a list": ([], "not a report's JSON object"),
               "arms as a list": ({**results, "arms": [naive]}, "`arms` must be an object"),
               "a pinned file missing": ({**results, "pinned": {"documents.json": []}}, "`pinned` must be an object"),
               "settings missing": ({**results, "run": {}, "partial_arms": {"reject": naive}}, "`run.settings`"),
               "an arm named like a path": ({**results, "arms": {"../../naive": naive}}, "not an arm"),
               "an unfinished arm among the finished": ({**results, "arms": {"naive": {**naive, "done": False}}},
                                                        "`arms.'naive'`: a finished arm has `done: true`"),
               "done as a string": ({**results, "arms": {"naive": {**naive, "done": "false"}}}, "`done: true`"),
               "a step short": ({**results, "arms": {"naive": {**naive, "steps": naive["steps"][:1]}}},
                                "1 steps, 2 documents"),
               "a step missing keys": ({**results, "arms": {"naive": {**naive, "steps": [{"step": 0}, naive["steps"][1]]}}},
                                       r"`arms.'naive'`.steps\[0\] must record"),
               "steps out of order": ({**results, "arms": {"naive": {**naive, "steps": swapped}}},
                                      r"steps\[0\] learned .* the pinned documents put"),
               "a malformed document": ({**results, "pinned": {**results["pinned"], "documents.json": [{"x": 1}, docs[1]]}},
                                        "a pinned document or suite half is malformed"),
               "a suite half malformed": ({**results, "pinned": {**results["pinned"], "regression_halves.json": {"gate": 1}}},
                                          "regression_halves.json.gate"),
               "a self-edit missing": ({**results, "self_edits": {}}, "`self_edits` must map every"),
               "finished and partial": ({**results, "partial_arms": {"naive": {**naive, "steps": naive["steps"][:1],
                                                                               "done": False}}},
                                        "naive both finished and stopped early"),
               "scores the report cannot read": ({**results, "arms": {"naive": {**naive, "base": {"docs": {}}}}},
                                                 "the arm records do not report")}
    for what, (data, message) in hostile.items():
        (tmp_path / "hostile.json").write_text(json.dumps(data))
        with pytest.raises(SystemExit, match="--restore-from .*hostile.json: .*" + message):
            restore_run(tmp_path / "hostile.json", tmp_path / "empty")
        assert not (tmp_path / "empty").exists(), what
    # this command's settings against the run's: named, before anything is written
    settings = {**results["run"]["settings"], "epochs": 3}
    with pytest.raises(SystemExit, match=r"the run was made with --epochs 1 \(this command: 3\): pass the run's flags"):
        restore_run(source, tmp_path / "empty", settings)
    assert not (tmp_path / "empty").exists()


def test_a_restore_is_whole_or_absent_and_refuses_unusable_paths(finished_run, tmp_path, monkeypatch):
    import continual

    source = finished_run / "continual_results.json"
    (tmp_path / "a-file").write_text("x")
    for out, message in ((tmp_path / "a-file", "not a directory"), (tmp_path / "a-file" / "sub", "cannot write")):
        with pytest.raises(SystemExit, match=f"--out {out}: {message}"):
            continual.restore_run(source, out)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="a symlink to nothing"):
        continual.restore_run(source, tmp_path / "dangling")
    written = []

    def full_disk(path, data):
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(path)
        path.write_text(json.dumps(data))

    monkeypatch.setattr(continual, "_write", full_disk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No space left on device"):
        continual.restore_run(source, tmp_path / "empty")
    assert len(written) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dangling", "empty"]
    assert not any((tmp_path / "empty").iterdir())  # nothing half-restored
    monkeypatch.undo()
    continual.restore_run(source, tmp_path / "empty")  # the same directory, once the disk has room
    assert json.loads((tmp_path / "empty" / "arm-naive.json").read_text())["done"] is True


def test_fresh_with_restore_is_refused_before_anything_is_deleted(finished_run, tmp_path):
    done = _run(*SETTINGS, "--out", str(finished_run), "--arms", "naive", "--report-only", "--fresh",
                "--restore-from", str(tmp_path / "missing.json"))
    assert done.returncode != 0 and "--fresh with --restore-from" in done.stderr
    assert json.loads((finished_run / "arm-naive.json").read_text())["done"] is True


def test_a_worker_step_records_what_a_restore_checks(finished_run):
    from continual import STEP_KEYS

    steps = json.loads((finished_run / "arm-naive.json").read_text())["steps"]
    assert all(set(step) == STEP_KEYS for step in steps)
