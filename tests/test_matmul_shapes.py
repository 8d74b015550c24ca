"""benchmarks/matmul_shapes.py: the matmuls of a run are recorded with their layouts and replayed alone."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from matmul_shapes import matmul_flops, record_matmuls, replay_seconds  # noqa: E402


def test_a_linear_layer_forward_and_backward():
    lin = torch.nn.Linear(32, 48)
    x = torch.randn(5, 32, requires_grad=True)
    calls = record_matmuls(lambda: lin(x).sum().backward())
    # forward addmm, then the input's and the weight's gradients; the sum's gradient is an expanded (stride 0) view
    assert sum(calls.values()) == 3
    assert matmul_flops(calls) == 3 * 2 * 5 * 32 * 48
    layouts = [arg[1] for _, described in calls for arg in described if isinstance(arg, tuple)]
    assert (0, 0) in layouts and (1, 32) in layouts  # expanded and transposed layouts are kept as recorded
    assert replay_seconds(calls, min_seconds=1e-4, best_of=1) > 0  # every recorded layout replays


def test_batched_matmuls_count_their_batch():
    a, b = torch.randn(3, 7, 4), torch.randn(3, 4, 6)
    calls = record_matmuls(lambda: torch.bmm(a, b))
    assert matmul_flops(calls) == 2 * 3 * 7 * 4 * 6
