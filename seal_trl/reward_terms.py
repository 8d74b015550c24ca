"""Reward terms besides the probe gain, measured on the adapted model of the same inner run (issue 33: a reward
that pays for not forgetting).

    reward = gain - forgetting_weight * max(0, forgetting) - constraint_weight * violations

per inner run, averaged over a self-edit's runs like the gain. `gain` is the reward `SelfEditReward` pays today (the
probe gain, against whatever baseline is set). `forgetting` is the adapted model's loss on a held-out general set
(the continual gate's regression suite, `continual/regression.py`) relative to the unadapted model: the relative
perplexity rise of its held-out text (`general_metric="perplexity"`), or the relative drop of its multiple-choice
QA soft accuracy (`"qa"`), both as the gate computes them. It is reported signed; only a rise is penalised, so a
self-edit earns nothing for improving the general set (a reward for that could be earned without learning the
passage). `violations` is how many constraints the adapted model fails (`continual/gate.py`'s constraints: banned
phrases or a user callable) on its greedy answers to the probe's prompts and a few fixed prompts (the suite's first
questions, as the gate asks). A failed run adapted nothing: it forgets nothing and violates nothing.

A term is measured only when its weight is above 0: with both weights 0, `SelfEditReward` runs no extra forward.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .continual.gate import CandidateOutputs, Constraint, banned_phrases, run_constraints
from .continual.regression import RegressionSuite, perplexity, qa_scores
from .inner.graders import greedy_answers

GENERAL_METRICS = ("perplexity", "qa")
#: How many of the suite's questions are fixed constraint prompts, besides the probe's (the gate asks 4 too).
FIXED_PROMPTS = 4


@dataclass
class RewardTerms:
    """The weights and settings of the terms subtracted from `SelfEditReward`'s gain (module docstring).

    `banned_phrases` (case-insensitive) and `constraints` (callables taking a `CandidateOutputs`, returning None
    to pass or a reason to fail, as the continual gate's) are the constraints; `constraint_weight` is paid per
    failed constraint. `suite` is the held-out general set (default: the bundled regression suite). `answer_tokens`
    bounds each greedy answer a constraint sees. A user callable enters a result store's key by its module, name
    and code: a closure over other values with the same code reads the other's stored runs.
    """

    forgetting_weight: float = 0.0
    general_metric: str = "perplexity"
    constraint_weight: float = 0.0
    banned_phrases: Sequence[str] = ()
    constraints: Sequence[Constraint] = ()
    suite: RegressionSuite | None = None
    answer_tokens: int = 24
    _checks: list[Constraint] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self):
        for name in ("forgetting_weight", "constraint_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RewardTerms.{name} must be a finite number >= 0 (0: term off), got {value!r}")
        if self.general_metric not in GENERAL_METRICS:
            raise ValueError(f"RewardTerms.general_metric must be one of {GENERAL_METRICS}, got "
                             f"{self.general_metric!r}")
        if isinstance(self.banned_phrases, str):  # one phrase, not its letters
            self.banned_phrases = [self.banned_phrases]
        self.banned_phrases = tuple(self.banned_phrases)
        self.constraints = tuple(self.constraints)
        if not all(callable(c) for c in self.constraints):
            raise ValueError("RewardTerms.constraints must be callables taking a CandidateOutputs (None: pass, a "
                             "reason: fail)")
        self._checks = [*self.constraints, *([banned_phrases(self.banned_phrases)] if self.banned_phrases else [])]
        if self.constraint_weight > 0 and not self._checks:
            raise ValueError("RewardTerms.constraint_weight > 0 but there is no constraint: set banned_phrases "
                             "(reward_banned_phrases) or constraints, or set constraint_weight to 0")
        if self._checks and self.constraint_weight == 0:
            raise ValueError("constraints are set but RewardTerms.constraint_weight is 0, so they would cost a "
                             "generation per run and change nothing: set constraint_weight > 0 "
                             "(reward_constraint_weight), or drop the constraints")
        if isinstance(self.answer_tokens, bool) or not isinstance(self.answer_tokens, int) or self.answer_tokens < 1:
            raise ValueError(f"RewardTerms.answer_tokens must be an integer >= 1, got {self.answer_tokens!r}")
        if self.suite is None and self.active:
            self.suite = RegressionSuite.bundled()

    @property
    def measures_forgetting(self) -> bool:
        return self.forgetting_weight > 0

    @property
    def measures_violations(self) -> bool:
        return bool(self._checks)

    @property
    def active(self) -> bool:
        """Whether any term is measured (else the reward is the gain alone, at today's cost)."""
        return self.measures_forgetting or self.measures_violations

    # ----- measurements (an `inner.jobs.Measure`) --------------------------------------------------------------
    def measure(self, model, tokenizer, probe) -> dict[str, float]:
        """What the active terms need from the adapted model: `general` (the general metric's value) and
        `violations` (the number of failed constraints)."""
        out = {}
        if self.measures_forgetting:
            out.update(self.measure_general(model, tokenizer, probe))
        if self.measures_violations:
            out["violations"] = float(self.violations(model, tokenizer, probe))
        return out

    def measure_general(self, model, tokenizer, probe=None) -> dict[str, float]:
        """`{"general": value}`: the held-out text's perplexity, or the QA set's soft accuracy (percent)."""
        if self.general_metric == "perplexity":
            value = perplexity(model, tokenizer, self.suite.heldout_text)  # inf for a diverged model: not finite
        else:
            value = qa_scores(model, tokenizer, self.suite)[1]
        return {"general": value}

    def constraint_prompts(self, probe) -> list[str]:
        """The prompts whose greedy answers the constraints read: the probe's, then the suite's first questions."""
        own = [item.prompt for item in probe.items] if probe is not None else []
        return own + [f"Question: {q}\nAnswer:" for q, _, _ in self.suite.qa[:FIXED_PROMPTS]]

    def violations(self, model, tokenizer, probe) -> int:
        """How many constraints the model fails on its greedy answers (`run_constraints`: a raising one fails)."""
        prompts = self.constraint_prompts(probe)
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=self.answer_tokens)

        def generate(prompt: str) -> str:  # valid during the call only: the next run changes the model
            return greedy_answers(model, tokenizer, [prompt], max_new_tokens=2 * self.answer_tokens)[0]

        failures = run_constraints(self._checks, CandidateOutputs(samples=dict(zip(prompts, answers)),
                                                                  generate=generate))
        return sum(reason is not None for reason in failures.values())

    # ----- the combination ---------------------------------------------------------------------------------------
    def forgetting(self, before: float, after: float) -> float:
        """Signed: the relative perplexity rise, or the relative drop of QA soft accuracy (< 0: it improved)."""
        if self.general_metric == "perplexity":
            return after / before - 1.0
        return 1.0 - after / max(before, 1e-9)

    def penalty(self, forgetting: float, violations: float) -> float:
        """What one run's terms subtract from its gain."""
        return self.forgetting_weight * max(0.0, forgetting) + self.constraint_weight * violations

    def run_terms(self, measures: Mapping[str, float] | None, general_before: float | None) -> tuple[float, float]:
        """(forgetting, violations) of one run from its measures; (0, 0) for a run that failed (`measures` None)."""
        if measures is None:
            return 0.0, 0.0
        forgetting = self.forgetting(general_before, measures["general"]) if self.measures_forgetting else 0.0
        return forgetting, measures.get("violations", 0.0)

    def settings(self) -> dict[str, Any]:
        """What a run's measures depend on (not the weights, which only combine them), for a result store's keys."""
        return {"general_metric": self.general_metric if self.measures_forgetting else None,
                "banned_phrases": list(self.banned_phrases), "constraints": [_callable_id(c) for c in self.constraints],
                "suite": hashlib.sha256(repr(self.suite).encode()).hexdigest() if self.suite else None,
                "answer_tokens": self.answer_tokens}


def _callable_id(fn) -> str:
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    digest = "" if code is None else hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}#{digest}"
