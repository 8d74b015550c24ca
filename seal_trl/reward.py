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
from .plans import FAILURE_REASONS, SelfEditError
from .reward_terms import RewardTerms
from .seeding import check_distinct_context_ids, content_digest, context_key, derive_seed
from .tasks.base import Baseline, Task, completion_text

logger = logging.getLogger(__name__)

# Failures that say nothing about the self-edit (a fault of this process, this time): rerun them after a restart.
_NOT_STORED = ("exception", "out_of_memory")

# What a self-edit's adapted score is measured against: the unadapted model (the paper), the model fine-tuned on
# the passage alone, or on the passage repeated to as many training tokens as the self-edit.
BASELINES = ("none", "passage", "passage-matched")


class SystematicInnerFailure(RuntimeError):
    """A reward call failed systematically (faults on too many runs, or every self-edit failing the same way).

    A bad self-edit is a normal event (reward 0 with a reason); an exception inside the engine on most runs
    (a model the inner loop cannot train, a sync that broke the weights, a kernel without autograd) would
    otherwise turn every reward into 0 and let training "succeed" while learning nothing.
    """


class SelfEditReward:
    """Reward = probe gain after fine-tuning on the self-edit, averaged over `repeats` seeded runs.

    A self-edit that cannot be parsed or whose run fails scores 0 (against a baseline: see below) with its reason
    logged (completion table column `inner_error`, metric `inner/failed/<reason>`, every reason logged on every
    call so processes average alike); training goes on. The score before adaptation is cached per context by the
    inner loop. `inner_loop` may be attached later (SEALTrainer does, once the
    policy is loaded). `hyperparameters` override the plan's training settings (learning_rate, epochs, ...).
    `store` (a `ResultStore` or a path) keeps every finished run on disk by content, so a killed run restarted
    with the same command recomputes none of them; `progress` shows a bar counting inner runs per call.
    `max_exception_rate` (faults: exceptions, out of memory) and `min_uniform_failures` (every self-edit failing
    for one reason): see `check_systematic_failure`.

    `baseline` sets what the adapted score is compared with. `"none"` (the paper): the unadapted model, so a
    self-edit earns its gain. `"passage"`: the model fine-tuned on the passage alone (same inner settings), so
    only a self-edit that teaches more than the passage earns a positive reward. `"passage-matched"`: the passage
    repeated to as many training tokens as the self-edit, so extra length alone earns nothing: the scores of the
    whole numbers of copies on either side of the self-edit's tokens, interpolated linearly in tokens (so a
    passage's self-edits share two or three baseline runs instead of one each). Baseline runs are cached per
    policy version, context and copy count (and kept in `store`). Against a baseline, a
    failed self-edit scores what the unadapted model scores against it (it adapted nothing), not 0.

    `max_copied` (a training option, off by default): a self-edit more than this share of whose 6-word sequences
    are the passage's own is failed with reason `copies_context` and not run, so ReST-EM never keeps it and GRPO
    ranks it last. A copy of the passage teaches what the passage-only baseline teaches; on the 135M model about
    half of the greedy self-edits are such copies (README, SEAL results).

    `terms` (a `RewardTerms`): subtract a forgetting term and a constraint-violation term, both measured on the
    adapted model of the same inner run (`reward_terms.py`); each is logged (`reward/gain`, `reward/forgetting`,
    `reward/violations`, and per completion in `last_terms`). The unadapted model's general-set value is measured
    once per policy version. Off by default, and then nothing extra is measured.
    """

    def __init__(self, task: Task, inner_loop: InnerLoop | None = None, *, repeats: int = 1, seed: int = 0,
                 hyperparameters: dict[str, Any] | None = None, name: str = "seal_inner_loop",
                 max_exception_rate: float = 0.5, store: ResultStore | str | os.PathLike | None = None,
                 progress: bool = True, baseline: str = "none", max_copied: float | None = None,
                 min_uniform_failures: int = 4, terms: RewardTerms | None = None):
        if max_copied is not None:
            if not 0.0 <= max_copied < 1.0:
                raise ValueError(f"max_copied must be in [0, 1) (a share of the self-edit), got {max_copied}")
            if not hasattr(task, "check_not_copied"):
                raise ValueError(f"max_copied compares the self-edit with the context's passage, and the {task.name} "
                                 "task has none: leave max_copied unset")
        self.max_copied = max_copied
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline != "none" and not hasattr(task, "baseline"):
            raise ValueError(f"baseline={baseline!r} fine-tunes on the context's passage, and the {task.name} task "
                             "has none: use baseline='none'")
        self.baseline = baseline
        self._reference: Baseline | None = None if baseline == "none" else task.baseline(baseline)
        self._baseline_runs: dict[str, InnerResult] = {}
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if not 0.0 <= max_exception_rate <= 1.0:
            raise ValueError(f"max_exception_rate must be in [0, 1], got {max_exception_rate}")
        self.max_exception_rate = max_exception_rate
        if isinstance(min_uniform_failures, bool) or not isinstance(min_uniform_failures, int) \
                or min_uniform_failures < 0:
            raise ValueError(f"min_uniform_failures must be an integer >= 0 (0: off), got {min_uniform_failures!r}")
        self.min_uniform_failures = min_uniform_failures
        self.store = ResultStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.progress = progress
        self.task = task
        self.inner_loop = inner_loop
        self.repeats = repeats
        self.seed = seed
        self.hyperparameters = dict(hyperparameters or {})
        self.__name__ = name  # TRL names reward columns and metrics after this
        self.last_results: list[list[InnerResult]] = []
        self.last_references: list[float] | None = None
        self.terms = terms if terms is not None else RewardTerms()
        if not isinstance(self.terms, RewardTerms):
            raise TypeError(f"terms must be a RewardTerms, got {type(self.terms).__name__}")
        self._general_before: dict[str, float] = {}  # the unadapted general-set value, per policy version
        self.last_terms: list[dict[str, float]] | None = None  # per self-edit: gain, forgetting, violations, reward

    def default_hyperparameters(self) -> dict[str, Any]:
        config = self.inner_loop.config
        base = {"learning_rate": config.learning_rate, "epochs": config.num_epochs, "batch_size": config.batch_size}
        return {**base, **self.hyperparameters}

    def _seed(self, context_id: str, text: str, repeat: int) -> int:
        sample = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
        return derive_seed(self.seed, context_id, sample, repeat)

    def score_one(self, context: dict[str, Any], self_edit: str | bytes
                  ) -> tuple[float, list[InnerResult], str | None]:
        """The reward of one self-edit for one context, its runs, and a failure reason (or None)."""
        return self.score_many([context], [self_edit])[0]

    def score_many(self, contexts: Sequence[dict[str, Any]], self_edits: Sequence[str | bytes]
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
        check_distinct_context_ids(contexts)
        version = self.inner_loop.policy_version if self.store is not None else ""
        settings = self._settings() if self.store is not None else {}
        measure = None
        if self.terms.active:
            measure = self.terms.measure
            settings["reward_terms"] = self.terms.settings()  # not in the baseline runs' keys: they measure nothing
        for i, (context, completion) in enumerate(zip(contexts, self_edits, strict=True)):
            probe = self.task.probe(context)
            context_id = context_key(context)
            try:
                # bytes and chat messages, as TRL's call gets them; what is not text is reward 0 ("unparseable")
                self_edit = completion_text(completion)
                self._check_not_copied(context, self_edit)
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
                jobs.append(InnerJob(plan, probe, context_id=context_id, seed=seed, measure=measure))
                owners.append(i)
                if self.store is not None:
                    keys.append(run_key(policy=version, context=_stored_context(context), self_edit=self_edit,
                                        settings=settings, seed=seed))
        results = self._run(jobs, keys)
        for owner, result in zip(owners, results, strict=True):
            parsed.setdefault(owner, []).append(result)
        out = []
        for i in range(len(self_edits)):
            runs = parsed[i]
            errors = [r.error for r in runs if r.error]
            out.append((mean(r.reward for r in runs), runs, errors[0] if errors else None))
        first_failed = [next((r for r in runs if not r.ok), None) for _, runs, _ in out]
        check_systematic_failure([*results, *crashed], self.max_exception_rate, first_failed,
                                 min_uniform_failures=self.min_uniform_failures)
        self.last_references = None
        out = out if self.baseline == "none" else self._against_baseline(contexts, out)
        self.last_terms = None
        return self._with_terms(out) if self.terms.active else out

    def _with_terms(self, scored: list[tuple[float, list[InnerResult], str | None]]
                    ) -> list[tuple[float, list[InnerResult], str | None]]:
        """Each reward less its runs' mean penalty (`RewardTerms.penalty` of each run's forgetting and violations;
        a failed run's are 0); the terms per self-edit in `last_terms`."""
        before = self.general_before() if self.terms.measures_forgetting else None
        out, self.last_terms = [], []
        for reward, runs, reason in scored:
            values = []
            for r in runs:
                if r.ok and not r.measures:
                    raise RuntimeError(f"the inner loop ({type(self.inner_loop).__name__}) returned a run without the "
                                       "reward terms' measures: its run_many must pass each job's `measure` on "
                                       "(InnerLoop.run(measure=...)), or leave the reward terms off")
                values.append(self.terms.run_terms(r.measures if r.ok else None, before))
            forgetting = mean(f for f, _ in values)
            violations = mean(v for _, v in values)
            total = reward - mean(self.terms.penalty(f, v) for f, v in values)
            self.last_terms.append({"gain": reward, "forgetting": forgetting, "violations": violations,
                                    "reward": total})
            out.append((total, runs, reason))
        return out

    def general_before(self) -> float:
        """The unadapted model's general-set value (the forgetting term's reference), once per policy version."""
        version = self.inner_loop.policy_version
        if version not in self._general_before:
            self._general_before[version] = self.inner_loop.measure_unadapted(self.terms.measure_general)["general"]
        return self._general_before[version]

    def _check_not_copied(self, context: dict[str, Any], self_edit: str) -> None:
        if self.max_copied is not None:
            self.task.check_not_copied(context, self_edit, self.max_copied)

    def _against_baseline(self, contexts: Sequence[dict[str, Any]], scored: list[tuple[float, list[InnerResult],
                          str | None]]) -> list[tuple[float, list[InnerResult], str | None]]:
        """Rewards measured against the task's baseline of each context (`task.baseline(kind)`: for the knowledge
        task, the passage-only fine-tune of the same context, or the passage repeated to the self-edit's tokens)."""
        if self.inner_loop.config.reward == "success":
            raise ValueError(f"baseline={self.baseline!r} compares scores, and inner reward 'success' is a score "
                             "itself: use reward 'gain' or 'binary', or baseline='none'")
        tokens = [[r.tokens_trained for r in runs if r.ok] for _, runs, _ in scored]
        references = self._reference.references(contexts, tokens, self._run_baseline, **self.default_hyperparameters())
        out, self.last_references = [], []
        for reference, (_, runs, reason) in zip(references, scored, strict=True):
            error = reference.error
            if error is not None:  # the self-edit trains on more than its baseline can: it fails
                runs = [dataclasses.replace(r, error=error.reason, error_message=str(error), score_after=None,
                                            reward=0.0) if r.ok else r for r in runs]
                reason = reason or error.reason
            self.last_references.append(reference.score)
            reward = mean(self.inner_loop.reward_from(reference.score, r.score_after if r.ok else r.score_before)
                          for r in runs)
            out.append((reward, runs, reason))
        return out

    def _run_baseline(self, requests: Sequence[tuple[dict[str, Any], str, Any, Any]]) -> list[list[InnerResult]]:
        """The `repeats` runs of each baseline (context, label, plan, probe), each cached per policy version,
        context and label (and kept in `store`)."""
        version, settings = self.inner_loop.policy_version, self._settings()
        jobs, keys, owners = [], [], []
        for n, (context, label, plan, probe) in enumerate(requests):
            cid = context_key(context)
            for r in range(self.repeats):
                seed = self._seed(cid, label, r)
                jobs.append(InnerJob(plan, probe, context_id=cid, seed=seed))
                keys.append(run_key(policy=version, context=_stored_context(context), self_edit=label,
                                    settings=settings, seed=seed))
                owners.append(n)
        todo = [i for i, key in enumerate(keys) if key not in self._baseline_runs]
        for i, result in zip(todo, self._run([jobs[i] for i in todo], [keys[i] for i in todo]), strict=True):
            self._baseline_runs[keys[i]] = result
        runs: list[list[InnerResult]] = [[] for _ in requests]
        for owner, key in zip(owners, keys, strict=True):
            runs[owner].append(self._baseline_runs[key])
        return runs

    def _settings(self) -> dict[str, Any]:
        """Everything besides the job that a run's result depends on (for the store's keys)."""
        config = dataclasses.asdict(self.inner_loop.config)
        config.pop("batch_self_edits")  # K slots and the compiled forward give the same results, up to float rounding
        config.pop("compile")
        settings = {"inner": config, "hyperparameters": self.default_hyperparameters(), "task": self._task_settings()}
        judge = getattr(getattr(self.inner_loop, "grader", None), "judge_model", None)
        if judge is not None:  # the judge's weights are not hashed: its name or path stands for them
            settings["judge"] = getattr(judge, "name_or_path", None) or type(judge).__name__
        return settings

    def _task_settings(self) -> list[Any]:
        """The task's type and every field that changes a plan or a probe (not the prompt-only ones)."""
        fields = {}
        if dataclasses.is_dataclass(self.task):
            fields = {f.name: getattr(self.task, f.name) for f in dataclasses.fields(self.task)
                      if f.name not in ("tokenizer", "chat", "name", "context_fields")}
        return [type(self.task).__name__, fields]

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
        scored = self.score_many(contexts, completions)
        rewards = [float(reward) for reward, _, _ in scored]
        all_runs = [runs for _, runs, _ in scored]
        reasons = [reason for _, _, reason in scored]
        self.last_results = all_runs
        choice = getattr(self.inner_loop, "slot_choice", None)  # duck-typed inner loops may not measure
        self._log(all_runs, reasons, log_extra, log_metric, self.last_references,
                  chosen_slots=None if choice is None else choice.slots)
        if self.last_terms is not None:
            self._log_terms(log_extra, log_metric)
        return rewards

    def _log_terms(self, log_extra: Callable | None, log_metric: Callable | None) -> None:
        """Each measured term per completion (completion table) and its mean (`reward/<term>`)."""
        names = ["gain", *(["forgetting"] if self.terms.measures_forgetting else []),
                 *(["violations"] if self.terms.measures_violations else [])]
        for name in names:
            values = [t[name] for t in self.last_terms]
            if log_extra is not None:
                log_extra(f"reward_{name}", [round(float(v), 5) for v in values])
            if log_metric is not None:
                log_metric(f"reward/{name}", mean(values))
        if log_metric is not None and self.terms.measures_forgetting:
            log_metric(f"reward/general_before_{self.terms.general_metric}", self.general_before())

    @staticmethod
    def _log(all_runs, reasons, log_extra, log_metric, references=None, chosen_slots: int | None = None) -> None:
        def first(runs, attr):
            value = getattr(runs[0], attr)
            return None if value is None else round(float(value), 5)

        if log_extra is not None:
            log_extra("score_before", [first(runs, "score_before") for runs in all_runs])
            if references is not None:
                log_extra("score_baseline", [round(float(r), 5) for r in references])
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
            if references:
                log_metric("inner/baseline_score_mean", mean(references))
            if chosen_slots is not None:
                log_metric("inner/batch_self_edits", chosen_slots)
            # every reason on every call, 0 where absent: TRL averages a metric over the processes that logged it
            counts = Counter(r for r in reasons if r)
            for reason in FAILURE_REASONS:
                log_metric(f"inner/failed/{reason}", counts[reason] / len(reasons))
        failures = [r for r in reasons if r]
        if failures:
            logger.info("%d of %d self-edits scored 0: %s", len(failures), len(reasons), dict(Counter(failures)))


def _stored_context(context: dict[str, Any]) -> str:
    """A context in a store key: its id and a digest of its content, so an edited passage is never read back."""
    return f"{context_key(context)}#{content_digest(context)}"


# Run failures that are faults of the setup (memory, code), not of one self-edit: counted against the fault rate.
FAULT_REASONS = ("exception", "out_of_memory")
# What to change when a reward call fails systematically, by failure reason.
FAILURE_FIXES = {
    "out_of_memory": "the inner model ran out of memory: lower inner_batch_self_edits (K), inner_max_seq_length "
                     "(tokens per example) or inner_batch_size, or set inner_load_in_4bit=True or "
                     "inner_gradient_checkpointing=True",
    "exception": "a setup fault, not bad self-edits (traceback below)",
    "over_budget": "every plan needs more optimizer steps than the budget: raise inner_step_budget, or lower "
                   "inner_epochs or inner_max_examples",
    "too_long": "every self-edit is over the token limits: raise inner_max_seq_length, or lower "
                "max_completion_length",
    "too_many_examples": "every self-edit has too many examples: raise inner_max_examples",
    "out_of_bounds": "every plan's hyperparameters are outside the inner bounds: check inner_learning_rate, "
                     "inner_epochs and inner_batch_size",
    "nan_loss": "every run diverged or its probe score was not finite: lower inner_learning_rate, turn "
                "inner_autocast off, or check the grader (inner_grader)",
    "copies_context": "every self-edit copies the passage: raise self_edit_max_copied, or leave it unset",
}
_POLICY_OUTPUT_FIX = ("the policy writes no usable self-edit: check the task prompt (self_edit_style), raise "
                      "max_completion_length if self-edits are cut off, or start from a model that follows the format")


def check_systematic_failure(results: Sequence[InnerResult], max_fault_rate: float,
                             self_edit_failures: Sequence[InnerResult | None] = (), *,
                             min_uniform_failures: int = 4) -> None:
    """Raise `SystematicInnerFailure` when a reward call failed for a reason that is not one self-edit's fault.

    Two rules. Faults (`FAULT_REASONS`: an exception, out of memory) in all runs, or in more than
    `max_fault_rate` of them. And, with at least `min_uniform_failures` self-edits (0: never), every self-edit
    failing for the same reason (`self_edit_failures`: each self-edit's first failed run, or None): every plan
    over the step budget, every self-edit too long, a grader whose score is never finite... A bad self-edit is a
    normal event, but when all of them fail the same way the setup is at fault. The message names the reason and
    the setting to change.
    """
    faults = [r for r in results if r.error in FAULT_REASONS]
    if faults and (len(faults) == len(results) or len(faults) / len(results) > max_fault_rate):
        kinds = Counter(r.error for r in faults)
        kind = kinds.most_common(1)[0][0]
        first = next(r for r in faults if r.error == kind)
        counts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        raise SystematicInnerFailure(
            f"{len(faults)} of {len(results)} inner runs failed ({counts}; limit {max_fault_rate:.0%} a reward "
            f"call, inner_max_exception_rate): {FAILURE_FIXES[kind]}. Training stops instead of scoring them 0. "
            f"First: {first.error_message}\n{first.traceback or ''}"
        )
    reasons = {None if r is None else r.error for r in self_edit_failures}
    if min_uniform_failures and len(self_edit_failures) >= min_uniform_failures and len(reasons) == 1:
        reason, first = reasons.pop(), self_edit_failures[0]
        if reason is not None:
            raise SystematicInnerFailure(
                f"all {len(self_edit_failures)} self-edits of a reward call failed as {reason!r}: "
                f"{FAILURE_FIXES.get(reason, _POLICY_OUTPUT_FIX)}. Training stops instead of scoring them all 0 "
                f"(inner_min_uniform_failures={min_uniform_failures}; 0 turns this check off). "
                f"First: {first.error_message}"
            )

