"""The "rescale" gate policy: shrink a refused candidate's update until the gate passes (STABLE, arXiv 2510.16089).

A LoRA update is `B @ A * scaling`; multiplying every `lora_B` by s multiplies the update by s exactly, so the
scaled adapter is an ordinary adapter (stored, synced, merged or stacked like any other). `search_scale` tries the
floor first and then bisects between the largest scale known to pass and the smallest known to fail; it does not
know what a gate is, so it is tested with plain functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import torch

T = TypeVar("T")


class Verdict(Protocol):
    passed: bool

    @property
    def reasons(self) -> list[str]: ...


def scale_update(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The adapter `state` (PEFT keys) with every lora_B tensor multiplied by `scale` (lora_A unchanged)."""
    if not any(k.endswith("lora_B.weight") for k in state):
        raise ValueError("scale_update needs a LoRA adapter state (lora_B tensors), got none")
    return {k: v * scale if k.endswith("lora_B.weight") else v for k, v in state.items()}


def search_scale(evaluate: Callable[[float], tuple[Verdict, T]], *, floor: float, steps: int
                 ) -> tuple[float | None, tuple[Verdict, T] | None, list[dict[str, Any]]]:
    """(the largest scale found to pass, what `evaluate` returned for it, every trial) for a candidate refused at
    scale 1. `evaluate(s)` gates the update scaled by s. The floor is tried first: when it fails (or is 1, already
    refused) the result is (None, None, trials). Otherwise `steps` bisections between the floor (passes) and 1
    (fails) each move the bound on their side. Each trial is `{"scale", "passed", "reasons"}`."""
    tried: list[dict[str, Any]] = []

    def trial(scale: float) -> tuple[Verdict, T]:
        out = evaluate(scale)
        tried.append({"scale": scale, "passed": bool(out[0].passed), "reasons": list(out[0].reasons)})
        return out

    if floor >= 1.0:
        return None, None, tried
    best = trial(floor)
    if not best[0].passed:
        return None, None, tried
    low, high = floor, 1.0
    for _ in range(steps):
        mid = (low + high) / 2
        out = trial(mid)
        if out[0].passed:
            low, best = mid, out
        else:
            high = mid
    return low, best, tried
