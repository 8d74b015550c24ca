"""Held-out evaluation of a policy's self-edits: generate one per context, run the inner loop, average gains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from .generation import generate_text
from .inner.engine import InnerLoop
from .inner.jobs import InnerJob, InnerResult
from .plans import SelfEditError
from .seeding import derive_seed


@dataclass
class SelfEditEvaluation:
    """Per-context results of one policy's self-edits on held-out contexts."""

    self_edits: list[str] = field(default_factory=list)
    results: list[InnerResult] = field(default_factory=list)

    @property
    def gains(self) -> list[float]:
        return [r.reward for r in self.results]

    @property
    def mean_gain(self) -> float:
        return mean(self.gains) if self.results else float("nan")

    @property
    def failure_rate(self) -> float:
        return mean(0.0 if r.ok else 1.0 for r in self.results) if self.results else float("nan")


def generate_self_edits(model, tokenizer, task, contexts: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 256,
                        temperature: float = 0.0, seed: int = 0) -> list[str]:
    """One self-edit per context from `model` (greedy when temperature is 0), prompted as the task prompts."""
    return [generate_text(model, tokenizer, task.prompt(context), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=derive_seed(seed, context.get("context_id")))
            for context in contexts]


def score_self_edits(inner_loop: InnerLoop, task, contexts: Sequence[Mapping[str, Any]], self_edits: Sequence[str],
                     *, seed: int = 0, hyperparameters: Mapping[str, Any] | None = None) -> SelfEditEvaluation:
    """Run each self-edit through the inner loop on its context; unparseable self-edits score 0.

    All runs go to `InnerLoop.run_many` in one call, so with `batch_self_edits=K` they train K at a time.
    """
    config = inner_loop.config
    hp = {"learning_rate": config.learning_rate, "epochs": config.num_epochs, "batch_size": config.batch_size,
          **(hyperparameters or {})}
    results: list[InnerResult | None] = []
    jobs, owners = [], []
    for context, edit in zip(contexts, self_edits, strict=True):
        probe = task.probe(context)
        cid = str(context.get("context_id"))
        try:
            plan = task.plan(context, edit, **hp)
        except SelfEditError as err:
            before = inner_loop.score(probe, context_id=cid)
            results.append(InnerResult(score_before=before, score_after=None, reward=0.0, error=err.reason,
                                       error_message=str(err)))
        else:
            owners.append(len(results))
            results.append(None)
            jobs.append(InnerJob(plan, probe, context_id=cid, seed=derive_seed(seed, cid, "eval")))
    for index, result in zip(owners, inner_loop.run_many(jobs), strict=True):
        results[index] = result
    return SelfEditEvaluation(self_edits=list(self_edits), results=results)


METHODS = ("none", "passage", "self-edit", "teacher")


def evaluate_methods(inner_loop: InnerLoop, task, contexts: Sequence[Mapping[str, Any]], methods: Sequence[str], *,
                     policy=None, tokenizer=None, teacher=None, max_new_tokens: int = 256, seed: int = 0,
                     progress: bool = True, scores: dict[str, list[float]] | None = None,
                     details: dict[str, Any] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The paper's table: for each held-out context adapt with each method, score the probe.

    `none`: no adaptation; `passage`: fine-tune on the passage alone; `self-edit`: on `policy`'s own greedy
    self-edit; `teacher`: on the self-edit of `teacher=(model, tokenizer)`. The inner loop must already mirror
    the policy (`inner_loop.sync_from(policy)`). Returns per-method scores and per-context details; pass your
    own `scores`/`details` dicts to keep what finished if the run is interrupted.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if "self-edit" in methods and (policy is None or tokenizer is None):
        raise ValueError("method 'self-edit' needs policy= and tokenizer=")
    if "teacher" in methods and teacher is None:
        raise ValueError("method 'teacher' needs teacher=(model, tokenizer)")
    from tqdm.auto import tqdm

    passage_task = _PassageOnly(task)
    scores = {} if scores is None else scores
    details = {} if details is None else details
    scores.update({m: [] for m in methods})
    details.update({"contexts": [str(c.get("context_id")) for c in contexts], "self_edits": {},
                    "errors": {m: [] for m in methods}})
    for method in methods:
        if method == "none":
            for c in tqdm(contexts, desc="none", disable=not progress):
                scores[method].append(inner_loop.score(task.probe(c), context_id=str(c.get("context_id"))))
                details["errors"][method].append(None)
            continue
        if method == "passage":
            edits, method_task = [""] * len(contexts), passage_task
        else:
            model, tok = (policy, tokenizer) if method == "self-edit" else teacher
            edits = details["self_edits"].setdefault(method, [])
            for c in tqdm(contexts, desc=f"{method}: writing", disable=not progress):
                edits.append(generate_self_edits(model, tok, task, [c], max_new_tokens=max_new_tokens, seed=seed)[0])
            method_task = task
        # K at a time when the inner loop batches self-edits (`batch_self_edits=K`), one at a time otherwise
        chunk = max(1, inner_loop.config.batch_self_edits)
        with tqdm(total=len(contexts), desc=f"{method}: adapting", disable=not progress) as bar:
            for start in range(0, len(contexts), chunk):
                ev = score_self_edits(inner_loop, method_task, contexts[start : start + chunk],
                                      edits[start : start + chunk], seed=seed)
                for result in ev.results:
                    scores[method].append(result.score_after if result.ok else result.score_before)
                    details["errors"][method].append(result.error)
                bar.update(len(ev.results))
    return scores, details


class _PassageOnly:
    """The 'passage' baseline: the plan is the passage itself (title-prefixed), whatever the self-edit says."""

    def __init__(self, task):
        self.task = task

    def probe(self, context):
        return self.task.probe(context)

    def plan(self, context, self_edit, **hyperparameters):
        from .plans import TrainingPlan

        return TrainingPlan.from_texts([f"{context['title']}\n{context['context']}"], **hyperparameters)
