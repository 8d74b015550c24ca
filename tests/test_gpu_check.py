"""benchmarks/gpu_check.sh works before a GPU is ever lent: its CPU dry run goes through every step at toy sizes (the
trainer runs with the re-sync check, bf16 autocast, the K timings, the preflight comparison, ZeRO-3 through
accelerate launch) and writes one JSON in which every step passed or was skipped with a reason."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["versions", "gpu_tests", "inner_4bit", "trainer_lora", "trainer_qlora", "bf16_autocast", "k_timings", "preflight_memory",
         "zero3_accelerate", "vllm_colocate"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "MODELS_DIR": str(tmp_path / "models"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    failed = {n: s["reason"] for n, s in steps.items() if s["status"] == "fail"}
    assert proc.returncode == 0 and not failed and report["failed"] == 0, (failed, proc.stdout[-3000:])
    assert list(steps) == STEPS and report["mode"] == "dry-run" and report["complete"]
    for step in steps.values():
        assert step["status"] in ("pass", "skip") and step["seconds"] >= 0
        assert (step["status"] == "skip") == bool(step["reason"]), step  # a skip always says why
    assert steps["inner_4bit"]["status"] == "skip" and "CUDA" in steps["inner_4bit"]["reason"]
    assert report["versions"]["torch"] and report["versions"]["trl"]
    for name in ("trainer_lora", "trainer_qlora", "zero3_accelerate"):  # bitsandbytes and deepspeed are in CI
        figures = steps[name]["figures"]
        assert steps[name]["status"] == "pass" and figures["steps"] == 2, (name, steps[name])
        assert figures["resync_steps"] == [0, 1] and max(figures["resync_gaps"]) <= figures["tolerance"]
        assert figures["policy_logits_moved"] > figures["tolerance"]
    k = steps["k_timings"]["figures"]
    assert list(k["by_k"]) == ["1", "4", "8", "16"] and k["flops_per_self_edit"] > 0 and k["peak_source"]
    assert all(row["seconds_per_self_edit"] > 0 and row["floor_share"] > 0 for row in k["by_k"].values())
    pre = steps["preflight_memory"]["figures"]
    assert pre["preflight_peak_bytes"] > 0 and pre["measured_peak_bytes"] > 0
    assert "predicted_bytes" in pre["planner"] or pre["planner"]["skipped"]
    assert "| trainer_lora | pass |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_a_failing_step_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    gpu_check = _module()

    def step_broken(ctx):
        raise ValueError("boom")

    def step_unavailable(ctx):
        raise gpu_check.Skip("needs a thing")

    def step_fine(ctx):
        return {"x": 1}

    monkeypatch.setattr(gpu_check, "STEPS", (step_broken, step_unavailable, step_fine))
    code = gpu_check.main_check("dry-run", tmp_path / "out", tmp_path / "models")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert code == 1 and report["failed"] == 1
    assert [(s["name"], s["status"], s["reason"]) for s in report["steps"]] == [
        ("broken", "fail", "ValueError: boom"), ("unavailable", "skip", "needs a thing"), ("fine", "pass", None)]


@pytest.mark.parametrize("mode", ["bogus"])
def test_gpu_check_refuses_an_unknown_mode(mode):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), mode], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
