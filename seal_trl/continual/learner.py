"""Continual self-adaptation: one document at a time, a candidate adapter, the gate, the registry.

For each new document the current promoted model writes self-edits; each is trained (with replay of earlier
documents' examples, optionally regularised toward the promoted weights) into a candidate LoRA adapter on
top of the promoted model; the best by the new document's probe is scored on every objective of the gate
(`gate.py`) and committed to the registry (`registry.py`), promoted only when the gate passes.

The promoted model lives in memory as the inner model's base weights plus the promoted chain: `merge` mode
folds each promoted adapter into the base weights (W0 + sum of B@A*scaling, recomputed from a pristine copy
of W0 so that any version is reproduced bit for bit), `separate` mode keeps each promoted adapter as its own
frozen PEFT adapter stacked under the candidate.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from .anchor import check_anchor_apart, check_anchor_texts, write_anchor_texts
from .config import ContinualConfig
from .gate import (CandidateOutputs, Constraint, GateVerdict, evaluate_gate, run_constraints,
                   total_budget_objectives)
from .document_probes import (DocumentProbe, drop_held_out, labelled_probe, score_probe, self_written_probe,
                         write_probe_text)
from .divergence import mean_token_kl
from .documents import Document
from .inner_loop import (ContinualInnerLoop, _deltas, adapter_misfit,  # noqa: F401 (_deltas: re-exported for tests)
                         adapter_scaling)
from ..inner.config import InnerLoopConfig
from ..inner.jobs import INNER_ADAPTER, InnerResult
from ..plans import SelfEditError, TrainingPlan
from .regression import RegressionSuite, regression_scores
from .registry import ADAPTER_FILE, AdapterRegistry
from .rescale import scale_update, search_scale
from ..seeding import content_digest, derive_seed

__all__ = ["AdaptReport", "ContinualConfig", "ContinualError", "ContinualInnerLoop", "ContinualLearner",
           "adapter_scaling"]

logger = logging.getLogger(__name__)


class ContinualError(RuntimeError):
    """A document that could not be adapted to at all (every self-edit failed to train)."""


@dataclass
class AdaptReport:
    """The outcome of one document: the committed version, whether it was promoted, and every score."""

    doc_id: str
    version: str
    parent: str | None
    promoted: bool
    verdict: GateVerdict
    before: dict[str, Any]
    after: dict[str, Any]
    probe_kind: str
    self_edit: str
    replay_examples: int
    seconds: float
    self_edit_error: str | None = None  # the kept self-edit was unusable: the candidate trained on the document alone
    failures: tuple[str, ...] = ()  # the other self-edits whose adaptation failed, with why
    scale: float = 1.0  # the factor the committed update was scaled by (gate_policy "rescale"), 1 = as trained

    def summary(self) -> str:
        state = "promoted" if self.promoted else "kept as a candidate (not promoted)"
        scaled = f"; update scaled x{self.scale:.4g} to pass the gate" if self.scale != 1.0 else ""
        lines = [f"{self.doc_id}: {self.version} (parent {self.parent or 'base'}) {state}; probe: {self.probe_kind}"
                 f"{scaled}"]
        if self.self_edit_error:
            lines.append(f"  ! self-edit unusable, trained on the document alone: {self.self_edit_error}")
        lines += [f"  ! adaptation FAILED for {f}" for f in self.failures]
        lines += [f"  - {o.name}: {o.value:+.4f} [{o.threshold}] {'ok' if o.passed else 'FAIL: ' + o.detail}"
                  for o in self.verdict.objectives]
        kl = self.after.get("kl_to_promoted")
        if kl is not None and not any(o.name == "kl_to_promoted" for o in self.verdict.objectives):
            lines.append(f"  - kl_to_promoted: {kl:.4f} nats/token (measured, not gated)")
        return "\n".join(lines)


class ContinualLearner:
    """Adapts one model to a stream of documents, gating every promotion; see the module docstring.

    `model` is the plain base model (already merged with a SEAL policy adapter if there is one); the
    registry's promoted version is loaded on top of it.
    """

    def __init__(self, model, tokenizer, registry: AdapterRegistry, config: ContinualConfig | None = None,
                 inner_config: InnerLoopConfig | None = None, *, constraints: Sequence[Constraint] = (),
                 regression_suite: RegressionSuite | None = None):
        self.config = config or ContinualConfig()
        self.registry = registry
        self.tokenizer = tokenizer
        self.constraints = list(constraints)
        self.suite = regression_suite or RegressionSuite.bundled()
        if self.config.check_regression:
            self.suite.check_measurable(tokenizer)
        if self.config.anchor_weight > 0 and self.config.anchor_texts:
            check_anchor_texts(tokenizer, self.config.anchor_texts)
        if self.config.anchor_weight > 0 and self.config.check_regression:
            check_anchor_apart(self.config.anchor_texts or None, [item[0] for item in self.suite.qa])
        self.inner = ContinualInnerLoop(model, tokenizer, inner_config, regularization=self.config.regularization)
        self._loaded: str | None = None
        self._synced = False  # whether the in-memory model reflects `_loaded` yet
        self._scores: dict[str | None, dict[str, Any]] = {}
        self._anchor_texts: list[str] | None = None
        self._base_regression: dict[str, Any] | None = None

    @property
    def model(self):
        return self.inner.model

    # ----- the promoted state ------------------------------------------------------------------------
    def sync(self) -> str | None:
        """Load the registry's promoted version into memory if it is not there; returns it."""
        promoted = self.registry.promoted
        if promoted != self._loaded or not self._synced:
            chain = []
            for v in self.registry.chain(promoted):
                scaling = adapter_scaling(self.registry.adapter_config(v))  # validated: finite, positive
                state = self.registry.load_adapter(v)
                problem = adapter_misfit(self.model, state)
                if problem is not None:
                    raise self.registry.damaged(v, self.registry.version_file(v, ADAPTER_FILE), problem)
                chain.append((v, state, scaling))
            self.inner.set_promoted(chain, self.config.mode)
            if self.config.anchor_weight > 0:
                self.inner.set_anchor(self.anchor_texts(), self.config.anchor_weight,
                                      max_tokens=self.config.anchor_max_tokens)
            self._loaded = promoted
            self._synced = True
        return promoted

    def anchor_texts(self) -> list[str]:
        """The KL anchor's general texts: the configured ones, else the model's own (written once, then kept)."""
        if self._anchor_texts is None:
            if self.config.anchor_texts:
                self._anchor_texts = list(self.config.anchor_texts)
            else:
                self.inner.reset_adapter(0)
                self._anchor_texts = write_anchor_texts(self.model, self.tokenizer,
                                                        max_new_tokens=self.config.anchor_max_tokens)
        return self._anchor_texts

    def earlier_records(self) -> list[dict[str, Any]]:
        """What the promoted chain learned: per document its text, probe and training examples."""
        return [rec for v in self.registry.chain(self._loaded) for rec in self.registry.documents(v)]

    # ----- probes, self-edits, plans -------------------------------------------------------------------
    def make_probe(self, document: Document) -> DocumentProbe:
        """Labelled questions when the document has them, else the model's own (or a cloze fallback)."""
        if document.has_questions:
            return labelled_probe(document)
        self.inner.reset_adapter(0)
        written = write_probe_text(self.model, self.tokenizer, document, n=self.config.probe_questions,
                                   max_new_tokens=self.config.probe_max_new_tokens)
        return self_written_probe(document, written, n=self.config.probe_questions)

    def write_self_edits(self, document: Document) -> list[str]:
        """`num_self_edits` self-edits from the promoted model: the first greedy, the rest sampled."""
        from ..evaluation import generate_self_edits
        from ..tasks.knowledge import KnowledgeTask

        chat = bool(getattr(self.tokenizer, "chat_template", None))
        task = KnowledgeTask(style=self.config.self_edit_style, chat=chat)
        self.inner.reset_adapter(0)
        edits = []
        for i in range(self.config.num_self_edits):
            temperature = 0.0 if i == 0 else self.config.self_edit_temperature
            edits += generate_self_edits(self.model, self.tokenizer, task, [document.as_context()],
                                         max_new_tokens=self.config.self_edit_max_new_tokens, temperature=temperature,
                                         seed=derive_seed(self.config.seed, document.doc_id, i))
        return edits

    def build_plan(self, document: Document, self_edit: str, probe: DocumentProbe,
                   replay_pool: Sequence[str], *, index: int = 0
                   ) -> tuple[TrainingPlan, list[str], list[str], str | None]:
        """(plan, new examples, replay examples, self-edit error). The probe's held-out sentences are removed from
        every new example; an unusable self-edit leaves the passage alone (the error is reported)."""
        from ..tasks.knowledge import KnowledgeTask

        cfg = self.inner.config
        passage = " ".join(drop_held_out([document.text], probe.held_out)) or document.text
        context = {**document.as_context(), "context": passage}
        error = None
        try:
            edit_plan = KnowledgeTask(style=self.config.self_edit_style, include_passage=False).plan(context, self_edit)
            lines = [ex.completion for ex in edit_plan.examples]
        except SelfEditError as err:
            lines, error = [], str(err)
        prefix = f"{document.title}\n"
        bodies = drop_held_out([t.removeprefix(prefix) for t in lines], probe.held_out)
        bodies = [b for b in bodies if len(b) > 3][: self.config.max_self_edit_lines]
        new = [prefix + b for b in bodies] + [prefix + passage]
        budget = cfg.bounds.step_budget // max(cfg.num_epochs, 1) * cfg.batch_size
        room = max(0, min(cfg.bounds.max_examples, budget) - len(new))
        n_replay = min(int(round(self.config.replay_ratio * len(new))), self.config.max_replay_examples,
                       len(replay_pool), room)
        rng = random.Random(derive_seed(self.config.seed, document.doc_id, index, "replay"))
        replay = rng.sample(list(replay_pool), n_replay) if n_replay else []
        plan = TrainingPlan.from_texts(new + replay, learning_rate=cfg.learning_rate, epochs=cfg.num_epochs,
                                       batch_size=cfg.batch_size)
        return plan, new, replay, error

    # ----- scores ------------------------------------------------------------------------------------
    def measure(self, probes: Mapping[str, DocumentProbe], *, regression: bool) -> dict[str, Any]:
        """Scores of the model as it is now on each probe, and on the regression suite when asked."""
        out: dict[str, Any] = {"docs": {d: score_probe(self.model, self.tokenizer, p) for d, p in probes.items()}}
        if regression:
            out["regression"] = regression_scores(self.model, self.tokenizer, self.suite)
        return out

    def promoted_scores(self, probes: Mapping[str, DocumentProbe]) -> dict[str, Any]:
        """The promoted model's scores (inner adapter at identity), cached per promoted version and probe content
        (a document learned again with other text gets a new probe, so a fresh before-score)."""
        cache = self._scores.setdefault(self._loaded, {"docs": {}})
        keys = {d: _probe_key(d, p) for d, p in probes.items()}
        missing = {d: p for d, p in probes.items() if keys[d] not in cache["docs"]}
        need_regression = self.config.check_regression and "regression" not in cache
        if missing or need_regression:
            self.inner.reset_adapter(0)
            fresh = self.measure(missing, regression=need_regression)
            cache["docs"].update({keys[d]: score for d, score in fresh["docs"].items()})
            if need_regression:
                cache["regression"] = fresh["regression"]
        return {"docs": {d: cache["docs"][keys[d]] for d in probes},
                **({"regression": cache["regression"]} if "regression" in cache else {})}

    def base_regression_scores(self) -> dict[str, Any]:
        """The base model's regression scores (no promoted adapter): the reference of the gate's total budget.
        Measured once per learner; with a promoted chain loaded, the chain is switched off for the measurement and
        loaded again."""
        if self._base_regression is None:
            if self._loaded is None and "regression" in self._scores.get(None, {}):
                self._base_regression = self._scores[None]["regression"]
            else:
                self._synced = False  # whatever happens below, the next sync loads the promoted chain again
                try:
                    self.inner.set_promoted([], self.config.mode)
                    self.inner.reset_adapter(0)
                    self._base_regression = regression_scores(self.model, self.tokenizer, self.suite)
                finally:
                    self.sync()
        return self._base_regression

    def _outputs(self, probe: DocumentProbe) -> CandidateOutputs:
        from ..inner.graders import greedy_answers

        prompts = [i.prompt for i in probe.probe.items] + [f"Question: {q}\nAnswer:" for q, _, _ in self.suite.qa[:4]]
        answers = greedy_answers(self.model, self.tokenizer, prompts, max_new_tokens=24)

        def generate(prompt: str) -> str:
            return greedy_answers(self.model, self.tokenizer, [prompt], max_new_tokens=48)[0]

        return CandidateOutputs(samples=dict(zip(prompts, answers)), generate=generate)

    # ----- one document --------------------------------------------------------------------------------
    def adapt(self, document: Document, *, self_edits: Sequence[str] | None = None) -> AdaptReport:
        """Learn one document into a candidate, gate it (rescaling it under gate_policy "rescale"), commit it,
        promote it when allowed."""
        start = time.perf_counter()
        cfg = self.config
        document = document.for_learner()  # the report half is never read past this line
        with self.registry.locked():
            parent = self.sync()
            earlier = self.earlier_records()
            if any(r["document"]["doc_id"] == document.doc_id for r in earlier):
                logger.warning("document %s was already learned by the promoted chain; learning it again",
                               document.doc_id)
            earlier = [r for r in earlier if r["document"]["doc_id"] != document.doc_id]
            earlier_probes = {r["document"]["doc_id"]: DocumentProbe.from_json(r["probe"]) for r in earlier}
            probe = self.make_probe(document)
            probes = {**earlier_probes, document.doc_id: probe}
            base = self.promoted_scores(probes)
            edits = list(self_edits) if self_edits is not None else self.write_self_edits(document)
            if not edits:
                edits = [""]
            pool = [ex for r in earlier for ex in r["examples"]]
            before_view = _view(base, document.doc_id, earlier_probes)
            if cfg.thresholds.has_total_budget and cfg.check_regression:
                before_view["base_regression"] = self.base_regression_scores()
                spent = [o.detail for o in total_budget_objectives(before_view["base_regression"],
                                                                   before_view["regression"], cfg.thresholds)
                         if not o.passed]
                if spent:
                    logger.warning("the promoted model is already over the total regression budget (%s): only a "
                                   "candidate that wins ability back can be promoted", "; ".join(spent))
            attempts = []
            for attempt in range(cfg.gentler_retries + 1):
                lr_scale = cfg.retry_lr_factor ** attempt
                inner_cfg = self.inner.config
                if attempt and inner_cfg.learning_rate * lr_scale < inner_cfg.bounds.min_learning_rate:
                    break  # gentler would be below the plan bounds' smallest learning rate: keep the last candidate
                best = self._train_best(document, edits, probe, pool, parent, lr_scale)
                judge = partial(self._judge, doc_id=document.doc_id, probes=probes, new_texts=best["new"],
                                before_view=before_view)
                verdict, judged = judge(best["state"])
                scale, tried = 1.0, [{"scale": 1.0, "passed": verdict.passed, "reasons": verdict.reasons}]
                failed = {o.name for o in verdict.objectives if not o.passed}
                # shrinking the update cannot raise the new document's gain: rescale only for the other objectives
                if cfg.gate_policy == "rescale" and cfg.promotion == "gate" and not failed <= {"new_document"}:
                    found, judged_at, more = search_scale(lambda s, b=best["state"], j=judge: j(scale_update(b, s)),
                                                          floor=cfg.rescale_floor, steps=cfg.rescale_steps)
                    tried += more
                    if found is not None:
                        scale, (verdict, judged) = found, judged_at
                attempts.append({"learning_rate_scale": lr_scale, "passed": verdict.passed,
                                 "reasons": verdict.reasons,
                                 **({"scale": scale, "tried": tried} if cfg.gate_policy == "rescale" else {})})
                failed = {o.name for o in verdict.objectives if not o.passed}
                # a gentler fine-tune can only help when something besides the new document's gain failed
                if verdict.passed or cfg.promotion != "gate" or failed <= {"new_document"}:
                    break
            after, after_view = judged["after"], judged["view"]
            record = {"document": document.to_json(), "probe": probe.to_json(), "examples": best["new"]}
            result: InnerResult = best["result"]
            metrics = {"before": before_view, "after": after_view, "self_edit_index": best["index"],
                       "attempts": attempts,
                       "self_edit_error": best["edit_error"], "replay_examples": len(best["replay"]),
                       "train": {"steps": result.steps, "seconds": round(result.train_seconds, 2),
                                 "final_loss": result.losses[-1] if result.losses else None},
                       "config": {"mode": cfg.mode, "promotion": cfg.promotion, "replay_ratio": cfg.replay_ratio,
                                  "regularization": cfg.regularization, "anchor_weight": cfg.anchor_weight,
                                  "anchor_texts": len(self._anchor_texts or ()),
                                  "gate_policy": cfg.gate_policy, "rescale_floor": cfg.rescale_floor,
                                  "rescale_steps": cfg.rescale_steps, "thresholds": asdict(cfg.thresholds),
                                  "regression_suite": self.suite.fingerprint() if cfg.check_regression else None}}
            if cfg.gate_policy == "rescale":
                metrics["rescale"] = {"scale": scale, "tried": tried}
            promote = cfg.promotion == "always" or (cfg.promotion == "gate" and verdict.passed)
            version = self.registry.add_version(
                judged["state"], self._adapter_config(), parent=parent,
                documents=[{"doc_id": document.doc_id, "title": document.title, "sha256": document.sha256,
                            "probe": probe.kind, "source": document.source}],
                metrics=metrics, verdict=verdict.to_json(),
                files={"documents.json": [record], "self_edit.txt": best["edit"]}, promote=promote,
                reason="" if verdict.passed else "promotion=always (naive sequential merge)")
            if promote:
                self._scores[version] = {"docs": {_probe_key(d, probes[d]): v for d, v in after["docs"].items()},
                                         **({"regression": after["regression"]} if "regression" in after else {})}
                self.sync()
            else:
                self.inner.reset_adapter(0)
        return AdaptReport(document.doc_id, version, parent, promote, verdict, before_view, after_view, probe.kind,
                           best["edit"], len(best["replay"]), time.perf_counter() - start,
                           self_edit_error=best["edit_error"], failures=tuple(best["failures"]), scale=scale)

    def _judge(self, state: Mapping[str, Any], doc_id: str, probes: Mapping[str, DocumentProbe],
               new_texts: Sequence[str], before_view: Mapping[str, Any]) -> tuple[GateVerdict, dict[str, Any]]:
        """Load the candidate `state` and gate it: every probe, the regression suite, the constraints and the KL to
        the promoted model on the new document's texts. Returns (verdict, {"state", "after", "view"})."""
        self.inner.load_candidate(state)
        after = self.measure(probes, regression=self.config.check_regression)
        after["kl_to_promoted"] = self.kl_to_promoted(new_texts)
        constraint_failures = (run_constraints(self.constraints, self._outputs(probes[doc_id]))
                               if self.constraints else {})
        view = _view(after, doc_id, [d for d in probes if d != doc_id])
        verdict = evaluate_gate(before_view, view, self.config.thresholds, constraint_failures)
        return verdict, {"state": state, "after": after, "view": view}

    def kl_to_promoted(self, texts: Sequence[str]) -> float:
        """Mean per-token KL(promoted || the model as it is now), in nats, on `texts` (the candidate's new-document
        training texts): the promoted model is this one with the candidate adapter switched off."""
        return mean_token_kl(self.model, self.tokenizer, texts, self.inner.candidate_disabled)

    def _train_best(self, document: Document, edits: Sequence[str], probe: DocumentProbe, pool: Sequence[str],
                    parent: str | None, lr_scale: float) -> dict[str, Any]:
        """Train each self-edit into a candidate; keep the best by the new document's probe."""
        cfg = self.config
        best, failures = None, []
        for i, edit in enumerate(edits):
            plan, new, replay, edit_error = self.build_plan(document, edit, probe, pool, index=i)
            if lr_scale != 1.0:
                plan = plan.with_hyperparameters(learning_rate=plan.learning_rate * lr_scale)
            result = self.inner.run(plan, probe.probe, context_id=f"{document.doc_id}@{parent}",
                                    seed=derive_seed(cfg.seed, document.doc_id, i))
            if not result.ok:
                failures.append(f"self-edit {i}: {result.error_message}")
                continue
            score = score_probe(self.model, self.tokenizer, probe)
            key = candidate_rank(score, cfg.thresholds.probe_metric)
            if best is None or key > best["key"]:
                best = {"key": key, "state": self.inner.adapter_state_dict(), "index": i, "edit": edit,
                        "new": new, "replay": replay, "edit_error": edit_error, "result": result}
        if best is None:
            raise ContinualError(f"document {document.doc_id!r}: no self-edit could be trained "
                                 f"({'; '.join(failures)})")
        best["failures"] = failures
        return best

    def adapt_all(self, documents: Sequence[Document], *, self_edits: Mapping[str, Sequence[str]] | None = None,
                  progress=None) -> list[AdaptReport]:
        """`adapt` each document in order, holding the registry lock for the whole run."""
        reports = []
        with self.registry.locked():
            for doc in documents:
                report = self.adapt(doc, self_edits=(self_edits or {}).get(doc.doc_id))
                reports.append(report)
                if progress is not None:
                    progress(report)
        return reports

    def _adapter_config(self) -> dict[str, Any]:
        cfg = self.model.peft_config[INNER_ADAPTER].to_dict()
        cfg["base_model_name_or_path"] = self.registry.base_model
        cfg["inference_mode"] = True
        return json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


def candidate_rank(score: Mapping[str, float], metric: str) -> tuple[float, float]:
    """How a trained self-edit ranks against the others on the gate half: its probe metric, then its log-likelihood.
    A NaN ranks lowest (compared as is, it is never greater, so a NaN first self-edit would block every later one)."""
    return tuple(-math.inf if math.isnan(v) else float(v) for v in (score[metric], score["loglik"]))


def _view(scores: Mapping[str, Any], doc_id: str, earlier: Sequence[str]) -> dict[str, Any]:
    """Measured scores as the gate reads them: the new document's, the earlier ones', the regression suite's and
    (for a candidate) the KL to the promoted model."""
    view = {"new": {doc_id: scores["docs"][doc_id]}, "earlier": {d: scores["docs"][d] for d in earlier},
            "regression": scores.get("regression")}
    if "kl_to_promoted" in scores:
        view["kl_to_promoted"] = scores["kl_to_promoted"]
    return view


def _probe_key(doc_id: str, probe: DocumentProbe) -> tuple[str, str]:
    return doc_id, content_digest(probe.to_json())
