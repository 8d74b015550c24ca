"""The matmul floor at the shapes a run really uses: record every matmul of a run, then time each shape alone.

The square-matmul floor (FLOPs / the rate of a 1024x1024 `torch.mm`) assumes every matmul runs as fast as a big
square one. A batch-1 inner step multiplies ~40-row activations by the model's weights, and such thin matmuls run
well below that rate on a CPU. Replaying each recorded (op, shapes, strides, dtype) alone, best of a few repeats,
gives the time those matmuls need at the very least on this machine: what is left above it is everything else
(elementwise ops, attention, autograd, the optimizer, Python).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
              torch.ops.aten.baddbmm.default}

Signature = tuple  # (op, ((shape, stride, dtype) or a scalar) for each argument)


class _RecordMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter[Signature] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMUL_OPS and not kwargs:
            self.calls[(func, tuple(_describe(a) for a in args))] += 1
        return func(*args, **(kwargs or {}))


def _describe(arg):
    if isinstance(arg, torch.Tensor):
        return tuple(arg.shape), tuple(arg.stride()), arg.dtype, arg.device.type
    return arg


def record_matmuls(fn: Callable[[], object]) -> Counter[Signature]:
    """Every matmul `fn()` runs, counted by signature (forward and backward alike)."""
    with _RecordMatmuls() as recorder:
        fn()
    return recorder.calls


def matmul_flops(calls: Counter[Signature]) -> int:
    """The FLOPs of the recorded matmuls (2 x the multiply-adds)."""
    total = 0
    for (op, described), count in calls.items():
        # the last two matrix arguments are the factors (addmm/baddbmm put the added term first)
        a, b = [d[0] for d in described if isinstance(d, tuple) and len(d) == 4 and len(d[0]) >= 2][-2:]
        batch = a[0] if len(a) == 3 else 1
        total += 2 * batch * a[-2] * a[-1] * b[-1] * count
    return total


def _materialise(arg):
    if not isinstance(arg, tuple) or len(arg) != 4:
        return arg
    shape, stride, dtype, device = arg
    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
    flat = torch.empty(size, dtype=dtype, device=device).uniform_(-1, 1)
    return flat.as_strided(shape, stride)  # the recorded layout, expanded (stride 0) and transposed views included


def replay_seconds(calls: Counter[Signature], *, min_seconds: float = 2e-3, best_of: int = 3) -> float:
    """Seconds to run every recorded matmul alone, each signature `count` times at its best measured speed."""
    total = 0.0
    for (op, described), count in calls.items():
        args = [_materialise(a) for a in described]
        op(*args)
        reps = 1
        while True:  # enough repeats that one measurement takes min_seconds
            start = time.perf_counter()
            for _ in range(reps):
                op(*args)
            _synchronize(args)
            if time.perf_counter() - start >= min_seconds or reps >= 1 << 12:
                break
            reps *= 2
        best = float("inf")
        for _ in range(best_of):
            start = time.perf_counter()
            for _ in range(reps):
                op(*args)
            _synchronize(args)
            best = min(best, (time.perf_counter() - start) / reps)
        total += best * count
    return total


def _synchronize(args) -> None:
    if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
        torch.cuda.synchronize()
