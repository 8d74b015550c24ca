"""SelfEditReward: a TRL reward function whose score is a real fine-tune of the model on each completion.

It follows TRL's reward-function protocol (`prompts`, `completions`, dataset columns as keyword lists, one
float per completion), so it works as `reward_funcs=[SelfEditReward(...)]` in a stock `GRPOTrainer` or
`RLOOTrainer` as well as in `SEALTrainer`. Each process scores its own completions; TRL gathers.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

from .inner.engine import InnerLoop
from .inner.jobs import InnerJob, InnerResult
from .plans import SelfEditError
from .seeding import derive_seed
from .tasks.base import Task, completion_text

logger = logging.getLogger(__name__)


class SelfEditReward:
    """Reward = probe gain after fine-tuning on the self-edit, averaged over `repeats` seeded runs.

    A self-edit that cannot be parsed or whose run fails scores 0 with its reason logged (completion table
    column `inner_error`, metric `inner/failed/<reason>`); training goes on. The score before adaptation is
    cached per context by the inner loop. `inner_loop` may be attached later (SEALTrainer does, once the
    policy is loaded). `hyperparameters` override the plan's training settings (learning_rate, epochs, ...).
    """

    def __init__(self, task: Task, inner_loop: InnerLoop | None = None, *, repeats: int = 1, seed: int = 0,
                 hyperparameters: dict[str, Any] | None = None, name: str = "seal_inner_loop"):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.task = task
        self.inner_loop = inner_loop
        self.repeats = repeats
        self.seed = seed
        self.hyperparameters = dict(hyperparameters or {})
        self.__name__ = name  # TRL names reward columns and metrics after this
        self.last_results: list[list[InnerResult]] = []

    def default_hyperparameters(self) -> dict[str, Any]:
        config = self.inner_loop.config
        base = {"learning_rate": config.learning_rate, "epochs": config.num_epochs, "batch_size": config.batch_size}
        return {**base, **self.hyperparameters}

    def _seed(self, context_id: str, text: str, repeat: int) -> int:
        sample = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
        return derive_seed(self.seed, context_id, sample, repeat)

    def score_one(self, context: dict[str, Any], self_edit: str) -> tuple[float, list[InnerResult], str | None]:
        """The reward of one self-edit for one context, its runs, and a failure reason (or None)."""
        return self.score_many([context], [self_edit])[0]

    def score_many(self, contexts: Sequence[dict[str, Any]], self_edits: Sequence[str]
                   ) -> list[tuple[float, list[InnerResult], str | None]]:
        """Rewards of many self-edits: all their inner runs go to the inner loop in one `run_many` call, so
        `batch_self_edits=K` trains K of them at once."""
        jobs: list[InnerJob] = []
        owners: list[int] = []
        parsed: dict[int, list[InnerResult]] = {}
        for i, (context, self_edit) in enumerate(zip(contexts, self_edits, strict=True)):
            probe = self.task.probe(context)
            context_id = str(context.get("context_id"))
            try:
                plan = self.task.plan(context, self_edit, **self.default_hyperparameters())
            except SelfEditError as err:
                before = self.inner_loop.score(probe, context_id=context_id)
                parsed[i] = [InnerResult(score_before=before, score_after=None, reward=0.0, error=err.reason,
                                         error_message=str(err))]
                continue
            for r in range(self.repeats):
                jobs.append(InnerJob(plan, probe, context_id=context_id, seed=self._seed(context_id, self_edit, r)))
                owners.append(i)
        for owner, result in zip(owners, self.inner_loop.run_many(jobs), strict=True):
            parsed.setdefault(owner, []).append(result)
        out = []
        for i in range(len(self_edits)):
            runs = parsed[i]
            errors = [r.error for r in runs if r.error]
            out.append((mean(r.reward for r in runs), runs, errors[0] if errors else None))
        return out

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], *,
                 log_extra: Callable | None = None, log_metric: Callable | None = None, **columns) -> list[float]:
        if self.inner_loop is None:
            raise RuntimeError("SelfEditReward has no inner loop: pass inner_loop=InnerLoop(...) or use SEALTrainer")
        missing = [f for f in self.task.context_fields if f not in columns]
        if missing:
            raise KeyError(
                f"the dataset is missing column(s) {missing} that the {self.task.name} task needs; build it with "
                "task.build_dataset(contexts)"
            )
        contexts = [{f: columns[f][i] for f in self.task.context_fields} for i in range(len(completions))]
        scored = self.score_many(contexts, [completion_text(c) for c in completions])
        rewards = [float(reward) for reward, _, _ in scored]
        all_runs = [runs for _, runs, _ in scored]
        reasons = [reason for _, _, reason in scored]
        self.last_results = all_runs
        self._log(all_runs, reasons, log_extra, log_metric)
        return rewards

    @staticmethod
    def _log(all_runs, reasons, log_extra, log_metric) -> None:
        def first(runs, attr):
            value = getattr(runs[0], attr)
            return None if value is None else round(float(value), 5)

        if log_extra is not None:
            log_extra("score_before", [first(runs, "score_before") for runs in all_runs])
            log_extra("score_after", [first(runs, "score_after") for runs in all_runs])
            log_extra("inner_error", [reason or "" for reason in reasons])
            log_extra("inner_seconds", [round(sum(r.seconds for r in runs), 2) for runs in all_runs])
        if log_metric is not None:
            flat = [r for runs in all_runs for r in runs]
            log_metric("inner/seconds_per_run", mean(r.seconds for r in flat))
            log_metric("inner/failure_rate", mean(1.0 if reason else 0.0 for reason in reasons))
            ok = [r.gain for r in flat if r.ok]
            if ok:
                log_metric("inner/gain_mean", mean(ok))
            for reason, count in Counter(r for r in reasons if r).items():
                log_metric(f"inner/failed/{reason}", count / len(reasons))
        failures = [r for r in reasons if r]
        if failures:
            logger.info("%d of %d self-edits scored 0: %s", len(failures), len(reasons), dict(Counter(failures)))
