"""The continual benchmark's step gain (`before_own` as an arm records it, the same figure rebuilt from the arm's
registry by benchmarks/continual_step_gain.py, the report's step learning), and what a run pins: its documents and
its regression suite, split into halves that share no sentence or question."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from continual_report import step_learning, summarise  # noqa: E402


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_backfilled_score_is_the_one_the_arm_recorded_before_each_step(tmp_path):
    """A naive arm promotes every step, so step k starts from a different model each time: the registry rebuild must
    load the version promoted after step k-1 (not step k's, nor the base) to reproduce the recorded score exactly."""
    out = tmp_path / "run"
    _run(str(ROOT / "benchmarks" / "continual.py"), "--model", "tiny", "--documents", "3", "--epochs", "2",
         "--out", str(out), "--arms", "naive", "--jobs", "1", "--threads", "1", "--no-append")
    path = out / "arm-naive.json"
    recorded = json.loads(path.read_text())
    assert [s["registry_promoted"] for s in recorded["steps"]] == ["v0001", "v0002", "v0003"]
    assert recorded["steps"][0]["before_own"] == recorded["base"]["docs"][recorded["steps"][0]["doc"]]
    stripped = {**recorded, "steps": [{k: v for k, v in s.items() if k != "before_own"} for s in recorded["steps"]]}
    path.write_text(json.dumps(stripped))
    _run(str(ROOT / "benchmarks" / "continual_step_gain.py"), "--out", str(out), "--arms", "naive")
    rebuilt = json.loads(path.read_text())
    assert [s["before_own"] for s in rebuilt["steps"]] == [s["before_own"] for s in recorded["steps"]]
    assert rebuilt["before_own_backfilled"]["steps"] == [0, 1, 2]
    # the later steps start from a trained model, so the step gain differs from learning against the base
    assert any(s["before_own"] != recorded["base"]["docs"][s["doc"]] for s in recorded["steps"][1:])


def _arm(after, before_own, base):
    ids = [f"d{k}" for k in range(len(after))]
    doc = lambda x: {"soft_accuracy": x, "accuracy": 0.0, "loglik": -1.0}  # noqa: E731
    steps = [{"doc": d, "promoted": True, "before_own": doc(before_own[k]),
              "scores": {e: doc(after[j]) for j, e in enumerate(ids[: k + 1])},
              "general": {"perplexity": 30.0, "qa_soft_accuracy": 50.0}} for k, d in enumerate(ids)]
    return {"base": {"docs": {d: doc(base[k]) for k, d in enumerate(ids)},
                     "general": {"perplexity": 30.0, "qa_soft_accuracy": 50.0}}, "steps": steps}


def test_step_learning_is_after_minus_before_own_and_is_judged_against_naive():
    # naive: damaged before each step (before_own below base), so it gains on the step but not against the base
    naive = _arm(after=[10.0, 10.0, 10.0, 10.0], before_own=[10.0, 6.0, 5.0, 4.0], base=[10.0] * 4)
    gated = _arm(after=[12.0, 12.0, 12.0, 12.0], before_own=[10.0, 10.0, 10.0, 10.0], base=[10.0] * 4)
    assert step_learning(naive, "soft_accuracy") == [0.0, 4.0, 5.0, 6.0]
    summary = summarise({"naive": naive, "rescale": gated})
    assert summary["naive"]["learning"]["mean"] == 0.0 and summary["naive"]["step_learning"]["mean"] == 3.75
    ratio = summary["rescale"]["step_learning_ratio"]
    assert ratio["mean"] == pytest.approx(2.0 / 3.75) and ratio["judgeable"] is True
    assert summary["rescale"]["step_learning_vs_naive"]["n"] == 4
    # the goal is still judged on learning against the base: not judgeable here
    assert summary["rescale"]["learning_ratio"]["judgeable"] is False
    # an arm without before_own on every step has no step learning
    del gated["steps"][2]["before_own"]
    assert step_learning(gated, "soft_accuracy") is None
    assert "step_learning" not in summarise({"naive": naive, "rescale": gated})["rescale"]


def test_a_run_reads_the_documents_it_pinned_not_the_bundled_file(tmp_path):
    from continual import run_documents

    first = run_documents(tmp_path, 2)
    assert [d.doc_id for d in first] == ["stream-01", "stream-02"]
    pinned = json.loads((tmp_path / "documents.json").read_text())
    pinned[0]["report_questions"][0]["answers"] = ["changed since"]
    (tmp_path / "documents.json").write_text(json.dumps(pinned))
    assert run_documents(tmp_path, 2)[0].report_questions[0]["answers"] == ["changed since"]
    with pytest.raises(SystemExit, match="not --documents 3"):
        run_documents(tmp_path, 3)
    # a run that started before documents were pinned is not pinned to today's bundled file
    older = tmp_path / "older"
    older.mkdir()
    (older / "arm-naive.json").write_text("{}")
    with pytest.raises(SystemExit, match="no documents.json"):
        run_documents(older, 2)
    assert not (older / "documents.json").exists()


def test_the_regression_suite_is_pinned_and_split_into_interleaved_halves(tmp_path):
    import re

    from continual import run_suite, split_suite

    from seal_trl.continual.regression import RegressionSuite

    suite = run_suite(tmp_path)
    assert suite == RegressionSuite.bundled() and (tmp_path / "regression_suite.json").exists()
    gate, report = split_suite(suite)
    sentences = re.split(r"(?<=[.!?])\s+", suite.heldout_text)
    assert gate.heldout_text == " ".join(sentences[0::2]) and report.heldout_text == " ".join(sentences[1::2])
    assert not set(gate.qa) & set(report.qa) and len(gate.qa) + len(report.qa) == len(suite.qa)
    # both halves reach the end of the text (cut in two, the gate half held only the first topics)
    assert sentences[-1] in (gate.heldout_text + report.heldout_text)
    assert sentences[-2] in gate.heldout_text + report.heldout_text
    assert {sentences[-1], sentences[-2]} - set(re.split(r"(?<=[.!?])\s+", gate.heldout_text)) == {
        sentences[-1] if len(sentences) % 2 == 0 else sentences[-2]}
    older = tmp_path / "older"
    older.mkdir()
    (older / "arm-naive.json").write_text("{}")
    with pytest.raises(SystemExit, match="no regression_suite.json"):
        run_suite(older)


def test_the_halves_are_pinned_so_a_later_split_cannot_change_a_run(tmp_path, monkeypatch):
    import continual
    from continual import run_suite, run_suite_halves, split_suite

    from seal_trl.continual.regression import RegressionSuite

    gate, report = run_suite_halves(tmp_path)
    assert (gate, report) == split_suite(run_suite(tmp_path))
    assert RegressionSuite.from_json(gate.to_json()) == gate
    monkeypatch.setattr(continual, "split_suite", lambda suite: (suite, suite))  # a later commit's split
    assert run_suite_halves(tmp_path) == (gate, report)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run_suite_halves(fresh)[0] == RegressionSuite.bundled()  # a new run takes the split of its commit
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "arm-naive.json").write_text("{}")
    (tmp_path / "older" / "regression_suite.json").write_text((tmp_path / "regression_suite.json").read_text())
    with pytest.raises(SystemExit, match="no regression_halves.json"):
        run_suite_halves(tmp_path / "older")
