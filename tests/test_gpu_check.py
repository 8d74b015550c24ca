"""benchmarks/gpu_check.sh works before a GPU is ever lent: its CPU dry run goes through every step (tests,
random-shape models, the batched benchmark, a SEALTrainer round, the summary) at toy sizes."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "MODELS_DIR": str(tmp_path / "models"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "GPU tests: 3 skipped" in summary  # collected and skipped (no CUDA here), not missing
    rows = [line for line in summary.splitlines() if line.startswith("| smollm2-135m | cpu / float32 |")]
    ks = [row.split("|")[3].strip() for row in rows]
    assert ks[:2] == ["1", "2"] and re.fullmatch(r"auto \(K=(1|2|4|8), [\d.]+ s to choose\)", ks[2]), ks
    assert "SEALTrainer round (cpu, bf16=False" in summary and "4 self-edits" in summary


def test_gpu_check_refuses_an_unknown_mode():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "bogus"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
