"""What the batched engine and the slot measurement use of an `InnerLoop`, as a protocol.

`engine.py` builds on `batched.py` and `auto_slots.py`; they in turn drive the loop that calls them. Typing that
loop as this protocol, not as `engine.InnerLoop`, keeps the imports one way (engine -> batched, auto_slots -> host).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from ..plans import TrainingPlan
from ..probes import Probe
from .config import InnerLoopConfig
from .graders import Grader
from .jobs import InnerResult, Measure
from .tensors import EncodedExample


class LoopHost(Protocol):
    """The parts of `seal_trl.inner.engine.InnerLoop` that `batched.py` and `auto_slots.py` call."""

    config: InnerLoopConfig
    model: Any  # the PEFT-wrapped inner model
    tokenizer: Any
    grader: Grader
    device: torch.device
    _layers: Sequence[Any]  # the LoRA layers holding the inner adapter

    @property
    def pad_token_id(self) -> int: ...

    def autocast(self) -> AbstractContextManager: ...

    def score(self, probe: Probe, *, context_id: str | None = None) -> float: ...

    def run(self, plan: TrainingPlan, probe: Probe, *, context_id: str | None = None, seed: int | None = None,
            measure: Measure | None = None) -> InnerResult: ...

    def reward_from(self, before: float, after: float) -> float: ...

    def reset_adapter(self, seed: int) -> None: ...

    def _activate_adapters(self) -> None: ...

    def _encode(self, plan: TrainingPlan) -> list[EncodedExample]: ...

    def _train(self, plan: TrainingPlan, encoded: list[EncodedExample], seed: int, result: InnerResult) -> None: ...

    def _batched_trainer(self, num_slots: int) -> Any: ...
