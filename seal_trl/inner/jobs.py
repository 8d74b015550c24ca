"""What the engines exchange: a job to run (`InnerJob`) and its outcome (`InnerResult`).

Both the sequential engine (`engine.py`) and the K-slot engine (`batched.py`) import these, so neither
imports the other for its data types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..plans import SelfEditError, TrainingPlan
from ..probes import Probe

INNER_ADAPTER = "inner"

#: A measurement of the adapted model, called as `measure(model, tokenizer, probe)` right after the probe is scored,
#: while the run's adapter is still live (no gradient, under the loop's autocast); returns named finite numbers.
Measure = Callable[[Any, Any, Probe], Mapping[str, float]]


@dataclass
class InnerResult:
    """The outcome of one self-edit run. `error` is a reason from `plans.FAILURE_REASONS`, or None."""

    score_before: float
    score_after: float | None
    reward: float
    error: str | None = None
    error_message: str | None = None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens_trained: int = 0
    train_seconds: float = 0.0
    score_seconds: float = 0.0
    seconds: float = 0.0
    seed: int | None = None
    traceback: str | None = None  # where `error == "exception"`: the formatted traceback, for a systematic fault
    measures: dict[str, float] = field(default_factory=dict)  # the job's `measure` of the adapted model, if any
    measure_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def gain(self) -> float | None:
        return None if self.score_after is None else self.score_after - self.score_before


@dataclass(frozen=True)
class InnerJob:
    """One self-edit to execute: its plan, the probe that scores it, the cache key of the probe and a seed, and
    optionally a `measure` of the adapted model (see `Measure`; its values land in `InnerResult.measures`)."""

    plan: TrainingPlan
    probe: Probe
    context_id: str | None = None
    seed: int | None = None
    measure: Measure | None = None


def checked_measures(values: Mapping[str, float]) -> dict[str, float]:
    """A measure's values as plain floats; a value that is not finite fails the run (`nan_loss`), as a probe score
    that is not finite does: the adapted model diverged on what the measure reads."""
    out = {}
    for name, value in values.items():
        value = float(value)
        if not math.isfinite(value):
            raise SelfEditError("nan_loss", f"the adapted model's {name} is {value}", field="measures")
        out[str(name)] = value
    return out
