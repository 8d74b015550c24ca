"""Settings of the inner loop (the per-self-edit LoRA fine-tune and probe scoring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..plans import PlanBounds

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The largest LoRA rank: above the hidden size of any model seal-trl adapts (the paper uses 32 and 128).
MAX_LORA_R = 4096
#: The most self-edits trained at once (K): each slot holds a LoRA adapter and its optimizer state, and "auto"
#: tries at most 32.
MAX_BATCH_SELF_EDITS = 256


@dataclass
class InnerLoopConfig:
    """How each self-edit is executed and scored. Defaults follow the paper's knowledge setting
    (LoRA r=32, alpha=64, dropout 0, lr 1e-3, 10 epochs, batch 1).

    `target_modules` is explicit (no PEFT guessing). `load_in_4bit` makes the inner model nf4 (QLoRA).
    `batch_self_edits=K > 1` trains K self-edits at once in K adapter slots (`InnerLoop.run_many`); the results
    equal one-at-a-time runs when `lora_dropout == 0` (with dropout the slots draw their masks from one RNG).
    `batch_self_edits="auto"` times a few steps at each K this device type allows and keeps the fastest
    (`auto_slots.py`), once per `InnerLoop`.
    `reward="gain"` is score_after - score_before; `"binary"` is 1.0 when the score rose, else 0.0;
    `"success"` is score_after itself (ARC: 1.0 when the adapted model solves the puzzle).
    `autocast="bf16"` runs the forward passes (training and scoring) under bf16 autocast while weights, LoRA
    tensors and optimizer state stay in the model's dtype: for CPUs with native bf16 (AVX512-BF16, AMX) and for
    GPUs holding an fp32 model. Off by default: fp32 is the CPU default.
    `compile=True` runs the sequential engine's training forward through `torch.compile` (dynamic shapes, so
    examples of any length share one graph); the compile is paid once per inner model, on its first training step.
    """

    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    learning_rate: float = 1e-3
    num_epochs: int = 10
    batch_size: int = 1
    lr_schedule: Literal["constant", "linear"] = "linear"
    max_grad_norm: float | None = 1.0
    max_seq_length: int = 1024
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    grader: Literal["loglik", "exact_match", "f1", "judge", "arc"] = "loglik"
    max_new_tokens: int = 32
    reward: Literal["gain", "binary", "success"] = "gain"
    seed: int = 0
    batch_self_edits: int | Literal["auto"] = 1
    autocast: Literal["off", "bf16"] = "off"
    compile: bool = False
    bounds: PlanBounds = field(default_factory=PlanBounds)

    def __post_init__(self):
        if isinstance(self.target_modules, str):  # one name, not its letters
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("InnerLoopConfig.target_modules is empty: name the linear layers to adapt, "
                             "e.g. ('q_proj', 'v_proj')")
        if not _is_int(self.lora_r) or not 1 <= self.lora_r <= MAX_LORA_R:
            raise ValueError(f"InnerLoopConfig.lora_r must be an integer in [1, {MAX_LORA_R}], got {self.lora_r!r}")
        if not is_finite_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"InnerLoopConfig.lora_alpha must be a number > 0 (0 makes every adapter a no-op, so "
                             f"every reward 0), got {self.lora_alpha!r}")
        self._check_plan_defaults()
        if self.max_grad_norm is not None and (not is_finite_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ValueError(f"InnerLoopConfig.max_grad_norm must be a number > 0, or None for no clipping, got "
                             f"{self.max_grad_norm!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"InnerLoopConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"InnerLoopConfig.lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if self.reward not in ("gain", "binary", "success"):
            raise ValueError(f"InnerLoopConfig.reward must be 'gain', 'binary' or 'success', got {self.reward!r}")
        if self.grader not in ("loglik", "exact_match", "f1", "judge", "arc"):
            raise ValueError(
                f"InnerLoopConfig.grader must be one of loglik, exact_match, f1, judge, arc; got {self.grader!r}"
            )
        self.batch_self_edits = parse_batch_self_edits(self.batch_self_edits, "InnerLoopConfig.batch_self_edits")
        if self.autocast not in ("off", "bf16"):
            raise ValueError(f"InnerLoopConfig.autocast must be 'off' or 'bf16', got {self.autocast!r}")
        if self.max_seq_length < 8:
            raise ValueError(f"InnerLoopConfig.max_seq_length must be >= 8, got {self.max_seq_length}")

    @property
    def example_token_limit(self) -> int:
        """The most tokens one training example may have: `max_seq_length`, capped by the plan bounds."""
        return min(self.bounds.max_example_tokens, self.max_seq_length)

    def _check_plan_defaults(self) -> None:
        """The epochs, batch size and learning rate every plan without its own gets must be inside the bounds:
        outside them each self-edit would fail as out of bounds, and a whole run would train on zero rewards."""
        b = self.bounds
        for name, high, bound in (("num_epochs", b.max_epochs, "max_epochs"),
                                  ("batch_size", b.max_batch_size, "max_batch_size")):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= high:
                raise ValueError(f"InnerLoopConfig.{name} must be an integer in [1, {high}] (PlanBounds.{bound}: "
                                 f"outside it every self-edit fails as out of bounds), got {value!r}")
        lr = self.learning_rate
        if not is_finite_number(lr) or not b.min_learning_rate <= lr <= b.max_learning_rate:
            raise ValueError(f"InnerLoopConfig.learning_rate must be in [{b.min_learning_rate:g}, "
                             f"{b.max_learning_rate:g}] (PlanBounds: outside it every self-edit fails as out of "
                             f"bounds), got {lr!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A real int or float (not a bool), not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_batch_self_edits(value, name: str = "batch_self_edits") -> int | Literal["auto"]:
    """An integer K in [1, MAX_BATCH_SELF_EDITS] or "auto"; digits in a string (from YAML or the command line) are
    read as K (at most 8 of them: a longer number is refused before it is converted)."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 8:
        value = int(value)
    if value == "auto" or (_is_int(value) and 1 <= value <= MAX_BATCH_SELF_EDITS):
        return value
    shown = f"{value[:20]!r}..." if isinstance(value, str) and len(value) > 20 else repr(value)
    raise ValueError(f"{name} must be an integer >= 1 and at most {MAX_BATCH_SELF_EDITS} (1 = one self-edit at a "
                     f"time) or 'auto' (measured), got {shown}")
