"""What the engines exchange: a job to run (`InnerJob`) and its outcome (`InnerResult`).

Both the sequential engine (`engine.py`) and the K-slot engine (`batched.py`) import these, so neither
imports the other for its data types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..plans import TrainingPlan
from ..probes import Probe

INNER_ADAPTER = "inner"


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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def gain(self) -> float | None:
        return None if self.score_after is None else self.score_after - self.score_before


@dataclass(frozen=True)
class InnerJob:
    """One self-edit to execute: its plan, the probe that scores it, the cache key of the probe and a seed."""

    plan: TrainingPlan
    probe: Probe
    context_id: str | None = None
    seed: int | None = None
