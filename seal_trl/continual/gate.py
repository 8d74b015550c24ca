"""The promotion gate: a candidate adapter is promoted only when every objective passes its threshold.

Objectives, each scored and stored on its own (never collapsed into one number):
- `new_document`: the candidate's gain on the new document's probe (must be > `min_new_gain`);
- `earlier_documents`: the mean drop on the probes of every earlier document (<= `max_earlier_drop` points),
  and optionally the worst single document's drop (<= `max_single_earlier_drop`);
- `regression_perplexity`: the relative rise of the held-out text's perplexity (<= `max_perplexity_increase`);
- `regression_qa`: the relative drop of the fixed QA set's soft accuracy (<= `max_qa_drop`);
- `total_perplexity`, `total_qa` (only when `max_total_perplexity_increase` / `max_total_qa_drop` is set): the same
  two measures against the *base* model (no promoted adapter) instead of the model the candidate would replace. The
  per-step limits alone let promotions compound (twenty +1.9% steps are +46%); a total budget bounds the stream;
- `kl_to_promoted` (only when `max_kl_to_promoted` is set): the mean per-token forward KL(promoted || candidate),
  in nats, on the new document's training texts (<= `max_kl_to_promoted`). It is measured for every candidate and
  stored in its scores either way: forgetting tracks this divergence on the new task's inputs (RL's Razor, arXiv
  2509.04259), and STABLE (arXiv 2510.16089) gates merges on it;
- `constraint:<name>`: each user constraint, a callable that returns None (pass) or a reason (fail).

`evaluate_gate(before, after, thresholds, constraint_failures)` is a pure function of score dictionaries,
so the gate is testable without a model. The learner that produces the scores is in `learner.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PROBE_METRICS = ("accuracy", "soft_accuracy", "loglik")
_OPTIONAL = ("max_single_earlier_drop", "max_kl_to_promoted", "max_total_perplexity_increase", "max_total_qa_drop")


@dataclass
class GateThresholds:
    """What a candidate must satisfy. Document scores use `probe_metric`: soft accuracy points by default,
    because a probe has a handful of questions, so plain accuracy moves in steps of 15-25 points and a 2-point
    limit on it would mean that no answer may flip. `max_kl_to_promoted` (nats per token, None = not gated; STABLE
    uses 0.7) limits the candidate's KL divergence from the promoted model on the new document's texts.
    `max_total_perplexity_increase` and `max_total_qa_drop` (relative, None = no budget) bound the regression
    suite's change against the base model (cumulative: whatever the promotions so far did, measured directly
    against the model with none of them); the per-step limits still apply."""

    probe_metric: str = "soft_accuracy"
    min_new_gain: float = 0.0
    max_earlier_drop: float = 2.0
    max_single_earlier_drop: float | None = None
    max_perplexity_increase: float = 0.02
    max_qa_drop: float = 0.02
    max_kl_to_promoted: float | None = None
    max_total_perplexity_increase: float | None = None
    max_total_qa_drop: float | None = None

    @property
    def has_total_budget(self) -> bool:
        return self.max_total_perplexity_increase is not None or self.max_total_qa_drop is not None

    def __post_init__(self):
        if self.probe_metric not in PROBE_METRICS:
            raise ValueError(f"GateThresholds.probe_metric must be one of {PROBE_METRICS}, got {self.probe_metric!r}")
        for name in ("min_new_gain", "max_earlier_drop", "max_single_earlier_drop", "max_perplexity_increase",
                     "max_qa_drop", "max_kl_to_promoted", "max_total_perplexity_increase", "max_total_qa_drop"):
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            # NaN compares false with everything, so a NaN threshold would refuse (or pass) every candidate
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise ValueError(f"GateThresholds.{name} must be a number, got {value!r}")
            if name != "min_new_gain" and value < 0:
                raise ValueError(f"GateThresholds.{name} must be >= 0, got {value}")


@dataclass
class Objective:
    """One objective's value, its threshold and whether it passed, with a human-readable reason."""

    name: str
    value: float
    threshold: str
    passed: bool
    detail: str = ""


@dataclass
class GateVerdict:
    """The gate's decision: `passed` only when every objective passed; `reasons` lists each failure."""

    passed: bool
    objectives: list[Objective] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f"{o.name}: {o.detail}" for o in self.objectives if not o.passed]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "objectives": [asdict(o) for o in self.objectives], "reasons": self.reasons}


@dataclass
class CandidateOutputs:
    """What a user constraint sees: the candidate's greedy answers to fixed prompts, and a way to ask more."""

    samples: dict[str, str]
    generate: Callable[[str], str] | None = None


Constraint = Callable[[CandidateOutputs], "str | None"]


def banned_phrases(phrases: Iterable[str], *, name: str = "banned_phrases") -> Constraint:
    """A constraint that fails when any sampled answer contains one of `phrases` (case-insensitive)."""
    phrases = list(phrases)
    if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise ValueError(f"banned_phrases needs one or more non-blank phrases, got {phrases!r}")
    lowered = [p.lower() for p in phrases]

    def check(outputs: CandidateOutputs) -> str | None:
        for prompt, text in outputs.samples.items():
            for p in lowered:
                if p in text.lower():
                    return f"an answer contains banned phrase {p!r} (prompt {prompt[-80:]!r})"
        return None

    check.__name__ = name
    return check


def run_constraints(constraints: Sequence[Constraint], outputs: CandidateOutputs) -> dict[str, str | None]:
    """Each constraint's failure reason (None = passed). A constraint that raises fails with the error."""
    results: dict[str, str | None] = {}
    for i, fn in enumerate(constraints):
        name = getattr(fn, "__name__", f"constraint_{i}")
        if name in results:
            name = f"{name}_{i}"
        try:
            reason = fn(outputs)
        except Exception as err:  # a user callable must not take the run down
            reason = f"raised {type(err).__name__}: {err}"
        results[name] = None if reason in (None, True) else ("failed" if reason is False else str(reason))
    return results


def evaluate_gate(before: Mapping[str, Any], after: Mapping[str, Any], thresholds: GateThresholds | None = None,
                  constraint_failures: Mapping[str, str | None] | None = None) -> GateVerdict:
    """Compare the promoted model's scores (`before`) with the candidate's (`after`).

    Both are `{"new": {doc_id: scores}, "earlier": {doc_id: scores}, "regression": {...}}` where document
    scores hold the `PROBE_METRICS` and regression scores `perplexity` and `qa_soft_accuracy`; `after` also holds
    `kl_to_promoted` (a number) when `thresholds.max_kl_to_promoted` is set.
    """
    t = thresholds or GateThresholds()
    m = t.probe_metric
    objectives: list[Objective] = []
    for doc_id, score in after["new"].items():
        gain = score[m] - before["new"][doc_id][m]
        objectives.append(Objective(
            "new_document", gain, f"> {t.min_new_gain:g}", gain > t.min_new_gain,
            f"{doc_id}: {m} {before['new'][doc_id][m]:.2f} -> {score[m]:.2f} (gain {gain:+.2f}, needs > "
            f"{t.min_new_gain:g})"))
    drops = {d: before["earlier"][d][m] - s[m] for d, s in after["earlier"].items()}
    if drops:
        mean_drop = sum(drops.values()) / len(drops)
        worst = max(drops, key=drops.get)
        objectives.append(Objective(
            "earlier_documents", mean_drop, f"<= {t.max_earlier_drop:g}", mean_drop <= t.max_earlier_drop,
            f"mean {m} drop {mean_drop:.2f} over {len(drops)} earlier document(s) (limit {t.max_earlier_drop:g}; "
            f"worst {worst}: {drops[worst]:.2f})"))
        if t.max_single_earlier_drop is not None:
            objectives.append(Objective(
                "earlier_document_worst", drops[worst], f"<= {t.max_single_earlier_drop:g}",
                drops[worst] <= t.max_single_earlier_drop,
                f"{worst} dropped {drops[worst]:.2f} (limit {t.max_single_earlier_drop:g})"))
    rb, ra = before.get("regression"), after.get("regression")
    if rb and ra:
        objectives += _regression_objectives(rb, ra, t.max_perplexity_increase, t.max_qa_drop, "regression_", "")
    if t.has_total_budget:
        base = before.get("base_regression")
        if not base or not ra:
            raise ValueError("GateThresholds has a total budget (max_total_perplexity_increase / max_total_qa_drop), "
                             "but the scores lack the candidate's `regression` or the base model's `base_regression`; "
                             "measure them (check_regression=True) or leave the budget None")
        objectives += total_budget_objectives(base, ra, t)
    if t.max_kl_to_promoted is not None:
        kl = after.get("kl_to_promoted")
        if not isinstance(kl, (int, float)) or isinstance(kl, bool):
            raise ValueError("GateThresholds.max_kl_to_promoted is set, but the candidate's scores have no number "
                             f"`kl_to_promoted` (got {kl!r}); measure it or leave the threshold None")
        objectives.append(Objective(
            "kl_to_promoted", kl, f"<= {t.max_kl_to_promoted:g}", kl <= t.max_kl_to_promoted,
            f"KL(promoted || candidate) {kl:.4f} nats per token on the new document's texts (limit "
            f"{t.max_kl_to_promoted:g})"))
    for name, reason in (constraint_failures or {}).items():
        objectives.append(Objective(f"constraint:{name}", 0.0 if reason else 1.0, "no violation", reason is None,
                                    reason or "ok"))
    return GateVerdict(passed=all(o.passed for o in objectives), objectives=objectives)


def total_budget_objectives(base: Mapping[str, float], scores: Mapping[str, float], thresholds: GateThresholds
                            ) -> list[Objective]:
    """The total budget's objectives: regression `scores` against the base model's (`base`)."""
    return _regression_objectives(base, scores, thresholds.max_total_perplexity_increase, thresholds.max_total_qa_drop,
                                  "total_", " since the base model")


def _regression_objectives(ref: Mapping[str, float], cand: Mapping[str, float], max_rise: float | None,
                           max_drop: float | None, prefix: str, since: str) -> list[Objective]:
    """The held-out perplexity rise and the QA soft-accuracy drop of `cand` relative to `ref` (a limit None: that
    measure is not gated)."""
    out = []
    if max_rise is not None:
        rise = cand["perplexity"] / ref["perplexity"] - 1.0
        out.append(Objective(
            f"{prefix}perplexity", rise, f"<= {max_rise:g}", rise <= max_rise,
            f"held-out perplexity {ref['perplexity']:.3f} -> {cand['perplexity']:.3f} ({100 * rise:+.2f}%{since}, "
            f"limit +{100 * max_rise:g}%)"))
    if max_drop is not None:
        drop = 1.0 - cand["qa_soft_accuracy"] / max(ref["qa_soft_accuracy"], 1e-9)
        out.append(Objective(
            f"{prefix}qa", drop, f"<= {max_drop:g}", drop <= max_drop,
            f"QA soft accuracy {ref['qa_soft_accuracy']:.2f} -> {cand['qa_soft_accuracy']:.2f} ({-100 * drop:+.2f}%"
            f"{since}, limit -{100 * max_drop:g}%)"))
    return out
