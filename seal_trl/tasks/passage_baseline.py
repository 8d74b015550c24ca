"""The knowledge task's passage-only baselines: what a self-edit's adapted score is measured against.

`passage`: the model fine-tuned on the passage alone (same inner settings). `passage-matched`: the passage
repeated to as many training tokens as the self-edit (`copies_to_match`), so extra length alone earns nothing.
The reward (`PassageBaseline`, through `KnowledgeTask.baseline`) and the held-out evaluation (`PassageOnly`) both
take their copy counts and plans from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from ..inner.jobs import InnerResult
from ..plans import SelfEditError, TrainingPlan
from ..probes import Probe
from ..seeding import context_key

KINDS = ("passage", "passage-matched")
# Failures of a passage-matched baseline plan that only say it repeats the passage more than the inner limits allow
_LIMIT_REASONS = ("too_many_examples", "too_long", "over_budget")

#: Runs baseline plans: one (context, label, plan, probe) per request, its repeats' results back per request. The
#: label names the run (e.g. for seeds and store keys) and can never be a self-edit's text.
RunPlans = Callable[[Sequence[tuple[Mapping[str, Any], str, TrainingPlan, Probe]]], list[list[InnerResult]]]


def matching_copies(target_tokens: float, tokens_per_copy: float) -> float:
    """How many copies of a passage train on `target_tokens` tokens, to a hundredth of a copy, at least one.

    A fractional count ends with a shortened copy (see `KnowledgeTask.passage_plan`). Whole copies alone would round
    a 1.7-passage self-edit's baseline up to 2 passages, 18% more tokens, and tokens are what move the score."""
    return max(1.0, round(target_tokens / tokens_per_copy, 2)) if tokens_per_copy > 0 else 1.0


def copies_to_match(self_edit_tokens: Sequence[float], passage_tokens: Sequence[float]) -> float:
    """Copies of the passage that train on as many tokens as the self-edit's runs did (their mean), from the tokens
    each of the passage's runs trained on (their mean); one copy where either has no runs."""
    return matching_copies(mean(self_edit_tokens) if self_edit_tokens else 0.0,
                           mean(passage_tokens) if passage_tokens else 0.0)


def whole_copies_around(copies: float) -> tuple[int, int]:
    """The whole copy counts on either side of a fractional one (both the same for a whole count)."""
    low = int(copies)
    return low, low if copies == low else low + 1


@dataclass
class Reference:
    """A self-edit's baseline score; `error` when the passage cannot be repeated to its tokens within the inner
    limits (then `score` is the most copies that could, and the self-edit fails with that error)."""

    score: float
    error: SelfEditError | None = None


class PassageBaseline:
    """The reward's passage baseline of one kind: each self-edit's reference score from passage-only fine-tunes.

    For `passage-matched`, a self-edit's reference interpolates linearly in tokens between the scores of the whole
    numbers of copies on either side of its tokens, so a passage's self-edits share two or three baseline runs
    instead of one each.
    """

    def __init__(self, task, kind: str):
        if kind not in KINDS:
            raise ValueError(f"baseline must be one of {KINDS}, got {kind!r}")
        self.task, self.kind = task, kind

    def references(self, contexts: Sequence[Mapping[str, Any]], self_edit_tokens: Sequence[Sequence[float]],
                   run: RunPlans, **hyperparameters) -> list[Reference]:
        """One reference per self-edit (`contexts[i]` and the tokens its successful runs trained on); every
        baseline plan trains with `hyperparameters`, and `run` runs them."""
        by_id = {context_key(c): c for c in contexts}
        references = self._scores(by_id, {(cid, 1) for cid in by_id}, run, hyperparameters)
        copies = []
        for context, trained in zip(contexts, self_edit_tokens, strict=True):
            once_tokens = references[context_key(context), 1][1]
            matched = self.kind == "passage-matched" and trained
            copies.append(copies_to_match(trained, [once_tokens]) if matched else 1.0)
        more = {(context_key(c), k) for c, exact in zip(contexts, copies, strict=True)
                for k in whole_copies_around(exact) if k > 1}
        references.update(self._scores(by_id, more, run, hyperparameters, beyond_limits_ok=True))
        out = []
        for context, exact in zip(contexts, copies, strict=True):
            cid = context_key(context)
            low, high = whole_copies_around(exact)
            error = None
            if (cid, high) not in references:  # the passage repeated that often breaks the inner limits
                most = max(k for c, k in references if c == cid)
                error = SelfEditError("too_long", f"it trains on as many tokens as {exact:.1f} copies of the passage; "
                                      f"the inner limits let the passage-matched baseline repeat it {most} times",
                                      field="self_edit")
                exact, low, high = most, most, most
            at_low, at_high = references[cid, low][0], references[cid, high][0]
            out.append(Reference(at_low + (exact - low) * (at_high - at_low), error))
        return out

    def _scores(self, contexts: dict[str, Mapping[str, Any]], wanted: set[tuple[str, int]], run: RunPlans,
                hyperparameters: dict[str, Any], *, beyond_limits_ok: bool = False
                ) -> dict[tuple[str, int], tuple[float, float]]:
        """(mean adapted score, mean tokens trained) of the passage-only plan with k copies, per (context id, k).

        A plan of several copies that breaks the inner limits is left out when `beyond_limits_ok` (the self-edits
        that would need it fail); any other failure, and one copy failing at all, stops with what to change."""
        owners = sorted(wanted)
        requests = [(contexts[cid], f"\x00baseline: passage x{k:g}",  # cannot be a self-edit's text; x2.0 keys as x2
                     self.task.passage_plan(contexts[cid], k, **hyperparameters), self.task.probe(contexts[cid]))
                    for cid, k in owners]
        runs: dict[tuple[str, int], list[InnerResult]] = {}
        for owner, results in zip(owners, run(requests), strict=True):
            for result in results:
                if not result.ok and beyond_limits_ok and owner[1] > 1 and result.error in _LIMIT_REASONS:
                    continue
                if not result.ok:
                    raise RuntimeError(
                        f"the {self.kind} baseline could not fine-tune on context {owner[0]!r} ({owner[1]} "
                        f"cop{'y' if owner[1] == 1 else 'ies'}): {result.error}: {result.error_message}. Raise the "
                        "inner limits (inner_max_seq_length, inner_step_budget) or set the reward baseline to 'none'")
                runs.setdefault(owner, []).append(result)
        return {owner: (mean(r.score_after for r in each), mean(r.tokens_trained for r in each))
                for owner, each in runs.items()}


class PassageOnly:
    """The evaluation's 'passage' method as a task: the plan is the passage itself (title-prefixed), whatever the
    self-edit says; with `copies` (a count per context key, fractional ones end with a shortened copy) it is
    repeated per epoch."""

    def __init__(self, task, copies: Mapping[str, float] | None = None):
        self.task, self.copies = task, copies

    def probe(self, context):
        return self.task.probe(context)

    def plan(self, context, self_edit, **hyperparameters):
        times = 1 if self.copies is None else self.copies[context_key(context)]
        return self.task.passage_plan(context, times, **hyperparameters)
