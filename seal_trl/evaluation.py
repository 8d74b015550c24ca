"""Held-out evaluation: adapt to each context with each method, score the probe; N self-edits per context.

Every method runs on the same contexts, so reports can compare methods pair by pair (`seal_trl.stats`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from statistics import mean
from typing import Any

from .generation import check_temperature, generate_text
from .inner.engine import InnerLoop
from .inner.graders import AnswerMatchGrader, JudgeGrader, exact_match, greedy_answers, normalize_answer, token_f1
from .inner.jobs import InnerJob, InnerResult
from .inner.sync import is_peft_model, unwrap
from .plans import SelfEditError
from .probes import Probe
from .seeding import context_key, derive_seed
from .tasks.knowledge import KnowledgeTask, check_passages_fit
from .tasks.passage_baseline import PassageOnly, copies_to_match


@dataclass
class SelfEditEvaluation:
    """Per-context results of one policy's self-edits on held-out contexts (and the probe each was scored on)."""

    self_edits: list[str] = field(default_factory=list)
    results: list[InnerResult] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)

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
                          temperature=temperature, seed=derive_seed(seed, context_key(context)))
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
    probes: list[Probe] = []
    jobs, owners = [], []
    for context, edit in zip(contexts, self_edits, strict=True):
        probe = task.probe(context)
        probes.append(probe)
        cid = context_key(context)
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
    return SelfEditEvaluation(self_edits=list(self_edits), results=results, probes=probes)


# ----- QA accuracy of greedy answers ---------------------------------------------------------------------------
QA_METRICS = ("contained", "exact_match", "f1")


def answer_contained(prediction: str, gold: str) -> float:
    """1.0 when the SQuAD-normalised gold answer occurs in the normalised prediction as whole words."""
    gold_words = normalize_answer(gold)
    return float(bool(gold_words) and f" {gold_words} " in f" {normalize_answer(prediction)} ")


def qa_scores(predictions: Sequence[str], probe: Probe) -> dict[str, float]:
    """Answer-contained accuracy, exact match and token F1 (best gold answer each), averaged over the questions."""
    metrics = {"contained": answer_contained, "exact_match": exact_match, "f1": token_f1}
    return {name: mean(max(fn(p, g) for g in item.answers) for p, item in zip(predictions, probe.items, strict=True))
            for name, fn in metrics.items()}


class _QARecorder:
    """Stands in for the inner loop's grader: returns the grader's score unchanged and, while the model is still
    adapted, also records the QA metrics of its greedy answers, keyed by the probe object it was asked about."""

    def __init__(self, grader, max_new_tokens: int):
        self.grader = grader
        self.name = grader.name  # the same score, so the same cache key for scores before adaptation
        self.max_new_tokens = max_new_tokens
        self._records: dict[int, tuple[Probe, dict[str, Any]]] = {}

    def score(self, model, tokenizer, probe: Probe) -> float:
        value = self.grader.score(model, tokenizer, probe)
        if isinstance(self.grader, (AnswerMatchGrader, JudgeGrader)):
            answers = list(self.grader.last_predictions)  # the grader's own greedy answers: no second generation
        else:
            answers = greedy_answers(model, tokenizer, [item.prompt for item in probe.items],
                                     max_new_tokens=self.max_new_tokens)
        self._records[id(probe)] = (probe, {**qa_scores(answers, probe), "answers": answers})
        return value

    def take(self, probe: Probe) -> dict[str, Any] | None:
        """The metrics of the latest score of this very probe object, or None if it was not scored."""
        record = self._records.pop(id(probe), None)
        return record[1] if record is not None and record[0] is probe else None

    def clear(self) -> None:
        self._records.clear()


@contextmanager
def _recording_qa(inner_loop: InnerLoop, enabled: bool) -> Iterator[_QARecorder | None]:
    if not enabled:
        yield None
        return
    recorder = _QARecorder(inner_loop.grader, inner_loop.config.max_new_tokens)
    inner_loop.grader = recorder
    try:
        yield recorder
    finally:
        inner_loop.grader = recorder.grader


# ----- methods ---------------------------------------------------------------------------------------------------
METHODS = ("none", "passage", "passage-matched", "self-edit", "base-self-edit", "teacher")
WRITERS = ("self-edit", "base-self-edit", "teacher")  # methods whose self-edits a model writes


def default_reference(methods: Sequence[str]) -> str:
    """The method others are compared with: the base policy's self-edits when evaluated, else passage-only."""
    for candidate in ("base-self-edit", "passage"):
        if candidate in methods:
            return candidate
    return methods[0]


def resolve_temperature(samples: int, temperature: float | None) -> float:
    """The sampling temperature of self-edits: given, or 1.0 for several samples and greedy (0) for one."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if temperature is None:
        return 1.0 if samples > 1 else 0.0
    temperature = check_temperature(temperature)
    if samples > 1 and temperature == 0:
        raise ValueError(f"samples={samples} greedy self-edits would all be the same: use temperature > 0")
    return float(temperature)


def _check_methods(methods: Sequence[str], policy, tokenizer, teacher) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if "passage-matched" in methods and methods.index("passage-matched") < max(
            (methods.index(m) for m in ("passage", "self-edit", "base-self-edit", "teacher") if m in methods),
            default=-1):
        raise ValueError("method 'passage-matched' matches the training tokens of methods evaluated before it: "
                         "list it after 'passage' and the self-edit method it is matched to")
    if {"self-edit", "base-self-edit"} & set(methods) and (policy is None or tokenizer is None):
        raise ValueError("methods 'self-edit' and 'base-self-edit' need policy= and tokenizer=")
    if "base-self-edit" in methods and not is_peft_model(unwrap(policy)):
        raise ValueError("method 'base-self-edit' needs a policy with a PEFT adapter (--adapter); without one, "
                         "'self-edit' is the base policy's self-edits")
    if "teacher" in methods and teacher is None:
        raise ValueError("method 'teacher' needs teacher=(model, tokenizer)")


def _writer(method: str, policy, tokenizer, teacher):
    """(model, tokenizer, context) that writes `method`'s self-edits; the base policy is the adapter switched off."""
    if method == "teacher":
        return teacher[0], teacher[1], nullcontext()
    if method == "base-self-edit":
        return policy, tokenizer, unwrap(policy).disable_adapter()
    return policy, tokenizer, nullcontext()


def evaluate_methods(inner_loop: InnerLoop, task, contexts: Sequence[Mapping[str, Any]], methods: Sequence[str], *,
                     policy=None, tokenizer=None, teacher=None, max_new_tokens: int = 256, seed: int = 0,
                     samples: int = 1, temperature: float | None = None, qa_metrics: bool = False,
                     names: Mapping[str, str] | None = None, progress: bool = True, matched_to: str = "self-edit",
                     scores: dict[str, list[float]] | None = None,
                     details: dict[str, Any] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The paper's table: for each held-out context adapt with each method, score the probe.

    `none`: no adaptation; `passage`: fine-tune on the passage alone; `self-edit`: on `policy`'s own self-edits;
    `base-self-edit`: on the self-edits of `policy` with its PEFT adapter switched off (the base policy);
    `teacher`: on the self-edits of `teacher=(model, tokenizer)`; `passage-matched`: the passage alone, repeated
    so that it trains on as many tokens as the `matched_to` method's self-edits did on the same context (a
    compute-matched baseline: both `passage` and `matched_to` must already be in `details`). Each writing method writes `samples` self-edits
    per context (sampled at `temperature`, seeded per context and sample index; greedy when there is one) and a
    context's score is their mean. With `qa_metrics`, the adapted model's greedy answers are also scored
    (answer contained, exact match, F1) while its adapter is in place.

    The inner loop must already mirror the model being adapted (`inner_loop.sync_from(policy)`). Results are
    keyed by `names.get(method, method)`; pass your own `scores`/`details` dicts to keep what finished if the
    run is interrupted, or to add methods evaluated later (e.g. after training) to the same report.
    Returns per-method, per-context scores and the details (per-sample scores, errors, self-edits, QA metrics).
    """
    _check_methods(methods, policy, tokenizer, teacher)
    temperature = resolve_temperature(samples, temperature)
    if isinstance(task, KnowledgeTask) and isinstance(inner_loop, InnerLoop):
        check_passages_fit(contexts, inner_loop.tokenizer, inner_loop.config.example_token_limit)
    names = dict(names or {})
    scores = {} if scores is None else scores
    details = {} if details is None else details
    details["contexts"] = [context_key(c) for c in contexts]
    details["titles"] = [str(c.get("title", "")) for c in contexts]
    for key in ("samples", "errors", "self_edits", "train_tokens", *(("qa", "qa_samples") if qa_metrics else ())):
        details.setdefault(key, {})
    run = _Run(inner_loop, task, contexts, seed=seed, progress=progress)
    with _recording_qa(inner_loop, qa_metrics) as recorder:
        run.recorder = recorder
        for method in methods:
            name = names.get(method, method)
            scores[name] = []
            if method == "none":
                run.none(name, scores, details)
                continue
            if method in ("passage", "passage-matched"):
                copies = None
                if method == "passage-matched":
                    copies = details.setdefault("matched_copies", {})[name] = matched_copies(
                        details["train_tokens"], passage=names.get("passage", "passage"), matched_to=matched_to)
                by_context = None if copies is None else dict(zip(details["contexts"], copies, strict=True))
                edits, method_task = [[""] for _ in contexts], PassageOnly(task, by_context)
            else:
                edits = details["self_edits"][name] = []
                run.write(method, edits, writer=_writer(method, policy, tokenizer, teacher), samples=samples,
                          temperature=temperature, max_new_tokens=max_new_tokens)
                method_task = task
            run.adapt(name, method_task, edits, scores, details)
    details["sampling"] = {"samples": samples, "temperature": temperature}
    return scores, details


class _Run:
    """One `evaluate_methods` call: the contexts, the inner loop and the per-context QA metrics before adaptation."""

    def __init__(self, inner_loop: InnerLoop, task, contexts, *, seed: int, progress: bool):
        self.inner_loop, self.task, self.contexts = inner_loop, task, contexts
        self.seed, self.progress = seed, progress
        self.recorder: _QARecorder | None = None
        self._unadapted: dict[str, dict[str, Any]] = {}

    def _bar(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(disable=not self.progress, **kwargs)

    def unadapted_qa(self, context) -> dict[str, Any]:
        """QA metrics of the model without adaptation (also what a failed self-edit leaves)."""
        cid = context_key(context)
        if cid not in self._unadapted:
            probe = replace(self.task.probe(context), context_id=None)  # no cache key: the grader really runs
            self.inner_loop.score(probe)
            self._unadapted[cid] = self.recorder.take(probe)
        return self._unadapted[cid]

    def adapted_qa(self, result: InnerResult, probe: Probe, context) -> dict[str, Any]:
        """QA metrics recorded when `result`'s adapted model was scored; a failed self-edit adapted nothing."""
        if not result.ok:
            return self.unadapted_qa(context)
        found = self.recorder.take(probe)
        if found is None:
            raise RuntimeError("QA metrics of an adapted model were not recorded: the inner loop scored the probe "
                               "without going through its grader")
        return found

    def none(self, name: str, scores, details) -> None:
        samples = details["samples"][name] = []
        errors = details["errors"][name] = []
        details["train_tokens"][name] = [[0] for _ in self.contexts]
        if self.recorder:
            details["qa_samples"][name] = []
        qa = details["qa_samples"][name] if self.recorder else None
        with self._bar(total=len(self.contexts), desc=name) as bar:
            for c in self.contexts:
                value = self.inner_loop.score(self.task.probe(c), context_id=context_key(c))
                samples.append([value])
                errors.append([None])
                scores[name].append(value)
                if qa is not None:
                    qa.append([self.unadapted_qa(c)])
                    _qa_means(details, name, [1] * len(qa))
                bar.update(1)

    def write(self, method: str, edits: list[list[str]], *, writer, samples: int, temperature: float,
              max_new_tokens: int) -> None:
        model, tokenizer, switched = writer
        with switched, self._bar(total=len(self.contexts), desc=f"{method}: writing") as bar:
            for c in self.contexts:
                edits.append([generate_self_edits(model, tokenizer, self.task, [c], max_new_tokens=max_new_tokens,
                                                  temperature=temperature, seed=derive_seed(self.seed, "sample", s))[0]
                              for s in range(samples)])
                bar.update(1)

    def adapt(self, name: str, method_task, edits: Sequence[Sequence[str]], scores, details) -> None:
        """Every (context, self-edit) pair through the inner loop, K at a time with `batch_self_edits=K`."""
        flat = [(i, c, e) for i, (c, each) in enumerate(zip(self.contexts, edits, strict=True)) for e in each]
        samples = details["samples"][name] = [[] for _ in self.contexts]
        errors = details["errors"][name] = [[] for _ in self.contexts]
        tokens = details["train_tokens"][name] = [[] for _ in self.contexts]
        if self.recorder:
            details["qa_samples"][name] = [[] for _ in self.contexts]
        qa = details["qa_samples"][name] if self.recorder else None
        chunk = self.inner_loop.max_batch_slots
        with self._bar(total=len(flat), desc=f"{name}: adapting") as bar:
            for start in range(0, len(flat), chunk):
                part = flat[start : start + chunk]
                ev = score_self_edits(self.inner_loop, method_task, [c for _, c, _ in part], [e for *_, e in part],
                                      seed=self.seed)
                for (i, c, _), result, probe in zip(part, ev.results, ev.probes, strict=True):
                    samples[i].append(result.score_after if result.ok else result.score_before)
                    errors[i].append(result.error)
                    tokens[i].append(result.tokens_trained)
                    if qa is not None:
                        qa[i].append(self.adapted_qa(result, probe, c))
                if self.recorder:
                    self.recorder.clear()
                scores[name] = [mean(s) for s, each in zip(samples, edits) if len(s) == len(each)]
                if qa is not None:
                    _qa_means(details, name, [len(each) for each in edits])
                bar.update(len(part))


def _qa_means(details: dict[str, Any], name: str, expected: Sequence[int]) -> None:
    """Per-context means over samples of each QA metric, for the contexts whose `expected` samples are all in."""
    done = [each for each, n in zip(details["qa_samples"][name], expected) if len(each) == n]
    details["qa"][name] = {m: [mean(s[m] for s in each) for each in done] for m in QA_METRICS}


def matched_copies(train_tokens: Mapping[str, Sequence[Sequence[int]]], *, passage: str, matched_to: str
                   ) -> list[float]:
    """Per context: how many copies of the passage (to a hundredth) train on as many tokens as `matched_to`'s
    self-edits did (their mean over samples), at least one; from the tokens each method trained on, per context."""
    for name in (passage, matched_to):
        if name not in train_tokens:
            raise ValueError(f"passage-matched needs method {name!r} evaluated first (its training tokens per "
                             f"context); evaluated so far: {list(train_tokens)}")
    return [copies_to_match(matched, once)
            for once, matched in zip(train_tokens[passage], train_tokens[matched_to], strict=True)]

