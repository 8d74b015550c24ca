"""SelfEditReward: a TRL reward function whose score is a real fine-tune of the model on each completion.

It follows TRL's reward-function protocol (`prompts`, `completions`, dataset columns as keyword lists, one
float per completion), so it works as `reward_funcs=[SelfEditReward(...)]` in a stock `GRPOTrainer` or
`RLOOTrainer` as well as in `SEALTrainer`. Each process scores its own completions; TRL gathers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

from tqdm.auto import tqdm

from .inner.engine import InnerLoop
from .inner.jobs import InnerJob, InnerResult
from .inner.store import ResultStore, run_key
from .plans import SelfEditError
from .seeding import context_key, derive_seed
from .tasks.base import Task, completion_text

logger = logging.getLogger(__name__)

# Failures that say nothing about the self-edit (a fault of this process, this time): rerun them after a restart.
_NOT_STORED = ("exception", "out_of_memory")


class SystematicInnerFailure(RuntimeError):
    """Too many inner runs of one reward call raised an exception: a setup fault, not bad self-edits.

    A bad self-edit is a normal event (reward 0 with a reason); an exception inside the engine on most runs
    (a model the inner loop cannot train, a sync that broke the weights, a kernel without autograd) would
    otherwise turn every reward into 0 and let training "succeed" while learning nothing.
    """


class SelfEditReward:
    """Reward = probe gain after fine-tuning on the self-edit, averaged over `repeats` seeded runs.

    A self-edit that cannot be parsed or whose run fails scores 0 with its reason logged (completion table
    column `inner_error`, metric `inner/failed/<reason>`); training goes on. The score before adaptation is
    cached per context by the inner loop. `inner_loop` may be attached later (SEALTrainer does, once the
    policy is loaded). `hyperparameters` override the plan's training settings (learning_rate, epochs, ...).
    `store` (a `ResultStore` or a path) keeps every finished run on disk by content, so a killed run restarted
    with the same command recomputes none of them; `progress` shows a bar counting inner runs per call.
    `max_exception_rate`: see `check_systematic_failure`.
    """

    def __init__(self, task: Task, inner_loop: InnerLoop | None = None, *, repeats: int = 1, seed: int = 0,
                 hyperparameters: dict[str, Any] | None = None, name: str = "seal_inner_loop",
                 max_exception_rate: float = 0.5, store: ResultStore | str | os.PathLike | None = None,
                 progress: bool = True):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if not 0.0 <= max_exception_rate <= 1.0:
            raise ValueError(f"max_exception_rate must be in [0, 1], got {max_exception_rate}")
        self.max_exception_rate = max_exception_rate
        self.store = ResultStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.progress = progress
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
        `batch_self_edits=K` trains K of them at once. With a `store`, runs already finished (same policy
        version, context, self-edit, settings and seed) are read back instead of rerun, and each new run is
        written as it finishes."""
        jobs: list[InnerJob] = []
        owners: list[int] = []
        keys: list[str] = []
        parsed: dict[int, list[InnerResult]] = {}
        crashed: list[InnerResult] = []
        version = self.inner_loop.policy_version if self.store is not None else ""
        settings = self._settings() if self.store is not None else {}
        for i, (context, self_edit) in enumerate(zip(contexts, self_edits, strict=True)):
            probe = self.task.probe(context)
            context_id = context_key(context)
            try:
                plan = self.task.plan(context, self_edit, **self.default_hyperparameters())
            except Exception as err:  # a self-edit never takes the step down; SelfEditError is the normal case
                before = self.inner_loop.score(probe, context_id=context_id)
                reason = err.reason if isinstance(err, SelfEditError) else "exception"
                result = InnerResult(score_before=before, score_after=None, reward=0.0, error=reason,
                                     error_message=str(err) if isinstance(err, SelfEditError)
                                     else f"{type(err).__name__}: {err}")
                if reason == "exception":
                    logger.exception("parsing a self-edit raised (context %s)", context_id)
                    result.traceback = traceback.format_exc()
                    crashed.append(result)
                parsed[i] = [result]
                continue
            for r in range(self.repeats):
                seed = self._seed(context_id, self_edit, r)
                jobs.append(InnerJob(plan, probe, context_id=context_id, seed=seed))
                owners.append(i)
                if self.store is not None:
                    keys.append(run_key(policy=version, context=context_id, self_edit=self_edit,
                                        settings=settings, seed=seed))
        results = self._run(jobs, keys)
        check_systematic_failure([*results, *crashed], self.max_exception_rate)
        for owner, result in zip(owners, results, strict=True):
            parsed.setdefault(owner, []).append(result)
        out = []
        for i in range(len(self_edits)):
            runs = parsed[i]
            errors = [r.error for r in runs if r.error]
            out.append((mean(r.reward for r in runs), runs, errors[0] if errors else None))
        return out

    def _settings(self) -> dict[str, Any]:
        """Everything besides the job that a run's result depends on (for the store's keys)."""
        config = dataclasses.asdict(self.inner_loop.config)
        config.pop("batch_self_edits")  # K slots give the same results as one at a time
        return {"inner": config, "hyperparameters": self.default_hyperparameters(),
                "task": [type(self.task).__name__, getattr(self.task, "style", None)]}

    def _run(self, jobs: list[InnerJob], keys: list[str]) -> list[InnerResult]:
        """Run the jobs not in the store (all of them without one), with a progress bar counting inner runs."""
        results: list[InnerResult | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        if self.store is not None:
            for i, key in enumerate(keys):
                results[i] = self.store.get(key)
            todo = [i for i in todo if results[i] is None]
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="inner runs", unit="run", leave=False,
                   disable=not self.progress or len(jobs) < 2 or os.environ.get("LOCAL_RANK", "0") != "0")

        def finished(index: int, result: InnerResult) -> None:
            position = todo[index]
            results[position] = result
            if self.store is not None and result.error not in _NOT_STORED:
                self.store.put(keys[position], result)
            bar.update(1)

        try:
            self.inner_loop.run_many([jobs[i] for i in todo], on_result=finished)
        finally:
            bar.close()
        return results  # type: ignore[return-value]

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


def check_systematic_failure(results: Sequence[InnerResult], max_exception_rate: float) -> None:
    """Raise `SystematicInnerFailure` when all runs, or more than `max_exception_rate` of them, raised."""
    raised = [r for r in results if r.error == "exception"]
    if not raised:
        return
    if len(raised) == len(results) or len(raised) / len(results) > max_exception_rate:
        first = raised[0]
        raise SystematicInnerFailure(
            f"{len(raised)} of {len(results)} inner runs raised an exception (limit {max_exception_rate:.0%} a "
            f"reward call): a setup fault, not bad self-edits, so training stops instead of scoring them 0. "
            f"First: {first.error_message}\n{first.traceback or ''}"
        )

