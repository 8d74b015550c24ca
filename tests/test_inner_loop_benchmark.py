"""benchmarks/inner_loop.py's reports: the per-slot profile and the slots row against the reference, from
constructed child results (the children themselves are the benchmark; here only what the report computes)."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import inner_loop  # noqa: E402


def _args(**overrides) -> argparse.Namespace:
    base = dict(model="tiny", plans=8, epochs=3, max_length=512, lora_r=32, targets=["q_proj"], batched=[1, 8],
                device="cpu", dtype="float32", json=None, autocast="off", compile=False, with_slots=None,
                profile=True, reference_plans=None)
    return argparse.Namespace(**{**base, **overrides})


@pytest.fixture
def captured(monkeypatch):
    sections = []
    monkeypatch.setattr(inner_loop, "append_section", lambda lines: sections.append("\n".join(lines)))
    monkeypatch.setattr(inner_loop, "model_path", lambda name: name)
    return sections


def test_the_slot_profile_is_per_self_edit(monkeypatch, captured):
    children = {
        "1": {"groups": {"matmuls (mm, addmm, bmm)": 6.0, "elementwise (add, mul, silu, rsqrt, pow, mean)": 2.0},
              "self_edits": 1, "wall_s": 8.5, "top": [["aten::mm", 6.0, 1000]]},
        "8": {"groups": {"matmuls (mm, addmm, bmm)": 24.0, "elementwise (add, mul, silu, rsqrt, pow, mean)": 16.0},
              "self_edits": 8, "wall_s": 42.0, "top": [["aten::mm", 24.0, 4000]]},
    }
    monkeypatch.setattr(inner_loop, "run_child", lambda args, variant, *extra: children[extra[-1]])
    inner_loop.parent_profile_slots(_args())
    (text,) = captured
    # 24 s of matmuls over 8 self-edits is 3 s each: 2x cheaper than K=1's 6 s; elementwise 2 s each, no cheaper
    assert "| matmuls (mm, addmm, bmm) | 6.00 | 3.00 | 2.00x |" in text
    assert "| elementwise (add, mul, silu, rsqrt, pow, mean) | 2.00 | 2.00 | 1.00x |" in text
    assert "| **total** | 8.00 | 5.00 | 1.60x |" in text
    assert "K=8: wall 5.25 s per self-edit" in text
    assert "| `aten::mm` | 3.00 | 500 |" in text


def test_the_slots_row_is_paired_with_the_reference(captured):
    results = {
        "engine": {"total_seconds": 40.0, "rewards": [1.0, 2.0], "peak_rss_mib": 100, "flops_first_run": 2e12,
                   "seconds": [20.0, 20.0]},
        "engine-slots": {"total_seconds": 25.0, "rewards": [1.0, 2.00005], "peak_rss_mib": 150},
        "reference": {"total_seconds": 300.0, "rewards": [1.1, 2.1], "peak_rss_mib": 120},
    }
    inner_loop.write_results(_args(plans=2, with_slots=4, profile=False), results, gflops=200.0)
    (text,) = captured
    assert "--with-slots 4" in text
    assert "| seal-trl InnerLoop, `batch_self_edits=4` | 4.80 | 12.5 | 150 | +1.5000 |" in text
    assert "**Speed-up: 7.5x**" in text  # one at a time: 300 / 40
    assert "**12.0x** the reference-style loop, 1.60x one at a time; rewards within 5.0e-05" in text


def test_a_reference_on_fewer_plans_is_compared_per_self_edit(captured):
    results = {
        "engine": {"total_seconds": 80.0, "rewards": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0], "peak_rss_mib": 100,
                   "flops_first_run": 2e12, "seconds": [10.0] * 8},
        "engine-slots": {"total_seconds": 40.0, "rewards": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
                         "peak_rss_mib": 150},
        "reference": {"total_seconds": 400.0, "rewards": [1.1, 2.1, 1.1, 2.1], "peak_rss_mib": 120},
    }
    inner_loop.write_results(_args(plans=8, with_slots=8, profile=False, reference_plans=4), results, gflops=200.0)
    (text,) = captured
    assert "--with-slots 8 --reference-plans 4`" in text
    assert "it runs the first 4 of the plans (the same mix), compared per self-edit" in text
    assert "| reference-style (Trainer, padded, disk) | 0.60 | 100.0 | 120 | +1.6000 |" in text
    assert "**Speed-up: 10.0x**" in text  # 100 s against 10 s a self-edit, not 400 s against 80 s
    assert "**20.0x** the reference-style loop, 2.00x one at a time" in text


@pytest.mark.parametrize("n", [3, 12])
def test_a_reference_plan_count_that_breaks_the_mix_is_refused(n):
    with pytest.raises(SystemExit, match=f"--reference-plans {n}: use a multiple of 4"):
        inner_loop.reference_plans(_args(plans=8, reference_plans=n))


def test_the_reference_runs_every_plan_by_default():
    assert inner_loop.reference_plans(_args(plans=6, reference_plans=None)) == 6
    assert inner_loop.reference_plans(_args(plans=8, reference_plans=4)) == 4
