"""ContinualConfig: how a stream of documents is learned and promoted (every field checked before a model loads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..inner.config import is_finite_number
from .gate import GateThresholds

#: Bisection steps of the rescale policy at most: each is one more full gate evaluation.
MAX_RESCALE_STEPS = 20
#: The largest L2 (`regularization`) or KL anchor (`anchor_weight`) weight: the defaults are 0 and 5.
MAX_PENALTY_WEIGHT = 10_000.0


@dataclass
class ContinualConfig:
    """How documents are learned and promoted.

    `promotion`: "gate" (promote only when every objective passes), "always" (the paper's naive sequential
    merge; the verdict is still recorded) or "never" (candidates only). `replay_ratio` earlier examples per new
    example are mixed into each plan (at most `max_replay_examples`). `regularization` is the weight of an L2
    penalty on the candidate's weight delta, i.e. toward the promoted weights. `anchor_weight` (5 by default,
    0 = off) adds a KL anchor (`anchor.py`): every training step also pays `anchor_weight * KL(promoted || candidate)` on general
    texts, `anchor_texts` or, when empty, the model's own answers to generic prompts (written once, at most
    `anchor_max_tokens` tokens each). When the gate refuses a candidate
    for forgetting, regression or a constraint, up to `gentler_retries` more candidates are trained with the
    learning rate multiplied by `retry_lr_factor` each time (the attempts are recorded in the metrics).

    `gate_policy` says what happens to a candidate the gate refuses for anything besides the new document's gain:
    "reject" keeps it as a refused candidate; "rescale" (STABLE, arXiv 2510.16089; only with promotion "gate")
    shrinks its update by a factor s (every lora_B times s, i.e. B @ A * scaling times s) and gates it again at s:
    first at `rescale_floor` (refused there: rejected as with "reject"), then bisecting `rescale_steps` times
    between the floor and 1 for the largest s that passes every objective, the new document's gain included. The
    update scaled by that s is committed and promoted. Rescaling happens within each attempt: a gentler retry is
    trained only when even the floor fails.
    """

    mode: Literal["merge", "separate"] = "merge"
    promotion: Literal["gate", "always", "never"] = "gate"
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    num_self_edits: int = 1
    self_edit_style: str = "implications"
    self_edit_max_new_tokens: int = 128
    self_edit_temperature: float = 0.8
    max_self_edit_lines: int = 16
    replay_ratio: float = 1.0
    max_replay_examples: int = 16
    regularization: float = 0.0
    anchor_weight: float = 5.0
    anchor_texts: tuple[str, ...] = ()
    anchor_max_tokens: int = 64
    gentler_retries: int = 0
    retry_lr_factor: float = 0.35
    gate_policy: Literal["reject", "rescale"] = "reject"
    rescale_floor: float = 0.125
    rescale_steps: int = 4
    probe_questions: int = 4
    probe_max_new_tokens: int = 160
    check_regression: bool = True
    seed: int = 0

    def __post_init__(self):
        """Every field is checked here, before any model loads or trains (a config read from JSON or YAML, with
        `thresholds` as a mapping, included)."""
        from ..tasks.knowledge import STYLES

        if self.mode not in ("merge", "separate"):
            raise ValueError(f"ContinualConfig.mode must be 'merge' or 'separate', got {self.mode!r}")
        if self.promotion not in ("gate", "always", "never"):
            raise ValueError(f"ContinualConfig.promotion must be 'gate', 'always' or 'never', got {self.promotion!r}")
        if self.gate_policy not in ("reject", "rescale"):
            raise ValueError(f"ContinualConfig.gate_policy must be 'reject' or 'rescale', got {self.gate_policy!r}")
        if isinstance(self.thresholds, Mapping):
            self.thresholds = GateThresholds(**self.thresholds)
        if not isinstance(self.thresholds, GateThresholds):
            raise ValueError("ContinualConfig.thresholds must be a GateThresholds (or a mapping of its fields), got "
                             f"{type(self.thresholds).__name__}")
        if not isinstance(self.check_regression, bool):
            raise ValueError("ContinualConfig.check_regression must be true or false (a boolean, not a string such as "
                             f"'no'), got {self.check_regression!r}")
        if self.thresholds.has_total_budget and not self.check_regression:
            raise ValueError("ContinualConfig.thresholds sets a total regression budget (max_total_perplexity_increase "
                             "/ max_total_qa_drop) but check_regression is False: turn the regression suite on "
                             "(drop --no-regression) or leave the budget unset")
        if self.self_edit_style not in STYLES:
            raise ValueError(f"ContinualConfig.self_edit_style must be one of {STYLES}, got {self.self_edit_style!r}")
        for name, low in (("num_self_edits", 1), ("self_edit_max_new_tokens", 1), ("max_self_edit_lines", 1),
                          ("max_replay_examples", 0), ("anchor_max_tokens", 2), ("gentler_retries", 0),
                          ("probe_questions", 1), ("probe_max_new_tokens", 1), ("rescale_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ContinualConfig.{name} must be an integer >= {low}, got {value!r}")
        for name in ("replay_ratio", "regularization", "anchor_weight", "self_edit_temperature"):
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0:
                raise ValueError(f"ContinualConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("regularization", "anchor_weight"):
            if getattr(self, name) > MAX_PENALTY_WEIGHT:
                raise ValueError(f"ContinualConfig.{name} must be at most {MAX_PENALTY_WEIGHT:g} (a weight this large "
                                 "drowns the language-model loss and overflows in training), got "
                                 f"{getattr(self, name)!r}")
        if self.gate_policy == "rescale" and self.promotion != "gate":
            raise ValueError(f"ContinualConfig.gate_policy 'rescale' shrinks candidates the gate refuses, but promotion "
                             f"is {self.promotion!r} (no gate): set promotion to 'gate' or leave gate_policy 'reject'")
        if not is_finite_number(self.retry_lr_factor) or not 0 < self.retry_lr_factor <= 1:
            raise ValueError(f"ContinualConfig.retry_lr_factor must be in (0, 1], got {self.retry_lr_factor!r}")
        if not is_finite_number(self.rescale_floor) or not 0 < self.rescale_floor <= 1:
            raise ValueError(f"ContinualConfig.rescale_floor must be in (0, 1], got {self.rescale_floor!r}")
        if self.rescale_steps > MAX_RESCALE_STEPS:
            raise ValueError(f"ContinualConfig.rescale_steps must be at most {MAX_RESCALE_STEPS} (each step gates the "
                             f"candidate again; 2^-{MAX_RESCALE_STEPS} is finer than any score can tell), got "
                             f"{self.rescale_steps!r}")
        if isinstance(self.anchor_texts, str) or not all(isinstance(t, str) for t in self.anchor_texts):
            raise ValueError("ContinualConfig.anchor_texts must be a list of texts (strings), not one string or "
                             "other values")
        self.anchor_texts = tuple(t for t in self.anchor_texts if t.strip())
