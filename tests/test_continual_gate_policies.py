"""Gate policies on the tiny model: rescale (STABLE) against reject, the KL-to-promoted objective, and proof that
the gate never reads a document's report half."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from seal_trl.continual.documents import Document
from seal_trl.continual.gate import GateThresholds
from seal_trl.continual.learner import ContinualConfig, ContinualLearner
from seal_trl.continual.registry import AdapterRegistry
from seal_trl.inner.jobs import INNER_ADAPTER
from test_continual_learner import DOC_A, EDIT_A, INNER, logits

FAST = replace(INNER, num_epochs=8)


def make_learner(path, model, tok, inner=FAST, **config) -> ContinualLearner:
    """No regression suite, replay or anchor: each test is about the gate alone and stays fast."""
    config = {"check_regression": False, "replay_ratio": 0.0, "anchor_weight": 0.0,
              "thresholds": GateThresholds(probe_metric="loglik", max_earlier_drop=0.05), **config}
    return ContinualLearner(model, tok, AdapterRegistry(path, create=True, base_model="tiny"),
                            ContinualConfig(**config), inner)


def keep_trained_states(learner: ContinualLearner) -> list[dict[str, torch.Tensor]]:
    """The adapter each training attempt produced, before any rescaling."""
    states, train = [], learner._train_best

    def spy(*args, **kwargs):
        best = train(*args, **kwargs)
        states.append({k: v.clone() for k, v in best["state"].items()})
        return best

    learner._train_best = spy
    return states


def update_at_most(learner: ContinualLearner, fraction: float, trained: list[dict[str, torch.Tensor]]):
    """A constraint that fails while the candidate's update is larger than `fraction` of the update its attempt
    trained (the last of `trained`): |B| scales by s, so it passes exactly for the scales up to `fraction`."""
    def update_size(outputs):
        size = sum(float(layer.lora_B[INNER_ADAPTER].weight.detach().abs().sum())
                   for layer in learner.inner.lora_layers().values())
        full = sum(float(v.abs().sum()) for k, v in trained[-1].items() if k.endswith("lora_B.weight"))
        return None if size <= fraction * full else f"update {size / full:.4f} of the trained"

    return update_size


def test_rescale_promotes_the_largest_passing_scale_and_the_registry_reproduces_it(tmp_path, tiny_model_dir,
                                                                                    tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    learner = make_learner(tmp_path / "reg", AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                           gate_policy="rescale", rescale_steps=3)
    trained = keep_trained_states(learner)
    learner.constraints = [update_at_most(learner, 0.6, trained)]
    report = learner.adapt(DOC_A, self_edits=[EDIT_A])
    # 1 fails; the floor 0.125 passes; 3 bisections: 0.5625 passes, 0.78125 and 0.671875 fail
    assert report.promoted and report.verdict.passed and report.scale == 0.5625
    assert "update scaled x0.5625" in report.summary()
    entry = learner.registry.get(report.version)
    tried = entry["metrics"]["rescale"]["tried"]
    assert [(t["scale"], t["passed"]) for t in tried] == [
        (1.0, False), (0.125, True), (0.5625, True), (0.78125, False), (0.671875, False)]
    assert tried[0]["reasons"][0].startswith("constraint:update_size: update 1.0000")
    assert entry["metrics"]["rescale"]["scale"] == 0.5625
    assert entry["metrics"]["attempts"] == [{"learning_rate_scale": 1.0, "passed": True, "reasons": [],
                                             "scale": 0.5625, "tried": tried}]
    # the new document's gain is gated (and passed) at the chosen scale; the KL is measured though not gated
    gain = next(o for o in report.verdict.objectives if o.name == "new_document")
    assert gain.passed and gain.value > 0
    assert 0 < entry["metrics"]["after"]["kl_to_promoted"] == report.after["kl_to_promoted"]
    assert "kl_to_promoted" not in {o.name for o in report.verdict.objectives}
    # the registry holds the update scaled: lora_A as trained, lora_B x 0.5625
    [state] = trained
    stored = learner.registry.load_adapter(report.version)
    assert stored.keys() == state.keys()
    for key, value in stored.items():
        assert torch.equal(value, state[key] * 0.5625 if key.endswith("lora_B.weight") else state[key]), key
    # the promoted (merged) model computes the scaled candidate, and a fresh learner synced from the registry too
    promoted = logits(learner, tiny_tokenizer)
    learner.inner.set_promoted([], "merge")
    learner.inner.load_candidate(stored)
    with torch.no_grad():
        ids = torch.tensor([tiny_tokenizer("Topic: Velmora\nQuestion: Which valley?\nAnswer: Ostrand")["input_ids"]])
        candidate = learner.model(input_ids=ids).logits
    assert torch.allclose(promoted, candidate, atol=1e-5)
    fresh = ContinualLearner(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                             AdapterRegistry(tmp_path / "reg"), replace(learner.config), FAST)
    assert fresh.sync() == report.version
    assert torch.equal(logits(fresh, tiny_tokenizer), promoted)


def test_rescale_rejects_when_the_floor_fails_and_then_retries_gentler(tmp_path, tiny_model, tiny_tokenizer):
    learner = make_learner(tmp_path / "reg", tiny_model, tiny_tokenizer, gate_policy="rescale", rescale_floor=0.25,
                           gentler_retries=1, retry_lr_factor=0.5)
    trained = keep_trained_states(learner)
    learner.constraints = [update_at_most(learner, 0.2, trained)]  # below the floor: no scale can pass
    report = learner.adapt(DOC_A, self_edits=[EDIT_A])
    assert not report.promoted and report.scale == 1.0 and learner.registry.promoted is None
    metrics = learner.registry.get(report.version)["metrics"]
    # within each attempt: scale 1, then the floor, which fails, so a gentler candidate is trained
    assert [a["learning_rate_scale"] for a in metrics["attempts"]] == [1.0, 0.5]
    for attempt in metrics["attempts"]:
        assert [(t["scale"], t["passed"]) for t in attempt["tried"]] == [(1.0, False), (0.25, False)]
        assert attempt["scale"] == 1.0 and not attempt["passed"]
    assert metrics["rescale"] == {"scale": 1.0, "tried": metrics["attempts"][-1]["tried"]}
    # the refused candidate is kept as trained (unscaled), as under "reject"
    stored = learner.registry.load_adapter(report.version)
    assert len(trained) == 2 and all(torch.equal(v, trained[-1][k]) for k, v in stored.items())


def test_kl_to_promoted_is_measured_for_every_candidate_and_gates_when_set(tmp_path, tiny_model, tiny_tokenizer):
    learner = make_learner(tmp_path / "reg", tiny_model, tiny_tokenizer, promotion="never",
                           thresholds=GateThresholds(probe_metric="loglik", max_kl_to_promoted=0.0))
    refused = learner.adapt(DOC_A, self_edits=[EDIT_A])
    kl = refused.after["kl_to_promoted"]
    objective = next(o for o in refused.verdict.objectives if o.name == "kl_to_promoted")
    assert kl > 0 and not objective.passed and objective.value == kl
    assert refused.verdict.reasons == [f"kl_to_promoted: {objective.detail}"]
    # the value is the mean per-token KL(promoted || candidate) on the new document's training texts
    texts = learner.registry.documents(refused.version)[0]["examples"]
    assert texts[-1] == f"{DOC_A.title}\n{DOC_A.text}" and len(texts) > 1  # self-edit lines + passage, no replay

    def all_logits():
        with torch.no_grad():
            return [learner.model(input_ids=torch.tensor([tiny_tokenizer(t)["input_ids"]])).logits[0, :-1].double()
                    for t in texts]

    learner.inner.reset_adapter(0)
    reference = all_logits()
    learner.inner.load_candidate(learner.registry.load_adapter(refused.version))
    candidate = all_logits()
    total = sum(float((p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum())
                for p, q in zip(reference, candidate))
    assert kl == pytest.approx(total / sum(p.shape[0] for p in reference), rel=1e-4)
    # promotion "always" measures it too; a huge limit passes
    learner.config = replace(learner.config, promotion="always",
                             thresholds=GateThresholds(probe_metric="loglik", max_kl_to_promoted=1e6))
    passed = learner.adapt(DOC_A, self_edits=[EDIT_A])
    assert passed.promoted and passed.verdict.passed and passed.after["kl_to_promoted"] > 0
    assert learner.registry.get(passed.version)["metrics"]["after"]["kl_to_promoted"] == passed.after[
        "kl_to_promoted"]


class RecordingBackend:
    """Stands in for a fast tokenizer's Rust backend, recording every text it is asked to tokenise."""

    def __init__(self, backend):
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "texts", [])

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def __setattr__(self, name, value):
        setattr(self._backend, name, value)

    def encode_batch(self, inputs, *args, **kwargs):
        self.texts.extend(map(str, inputs))
        return self._backend.encode_batch(inputs, *args, **kwargs)

    def encode(self, sequence, *args, **kwargs):
        self.texts.append(str(sequence))
        return self._backend.encode(sequence, *args, **kwargs)


MARK = "Zorblatt"  # in every report question and answer, nowhere else


def test_the_gate_never_reads_a_report_question(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """Everything the learner tokenises while choosing a candidate and deciding its promotion is recorded: no report
    question or answer is among it, and none reaches the registry's files. (Removing `for_learner()` from
    `ContinualLearner.adapt` makes the registry half fail: documents.json then keeps the report half.)"""
    report_half = ({"question": f"Which {MARK} guards the valley?", "answers": [f"{MARK} Keep"]},
                   {"question": f"Who built the {MARK} bridge?", "answers": [f"Mira {MARK}"]})
    labelled = Document(DOC_A.doc_id, DOC_A.title, DOC_A.text, DOC_A.questions, report_questions=report_half)
    unlabelled = Document("c", "Brightwell", "A company named Brightwell built copper bridges. The bridges cross the "
                          "Quorn canal. Work began in 1874 with forty sailors.", report_questions=report_half)
    backend = RecordingBackend(tiny_tokenizer._tokenizer)
    monkeypatch.setattr(tiny_tokenizer, "_tokenizer", backend)
    learner = make_learner(tmp_path / "reg", tiny_model, tiny_tokenizer, replace(FAST, num_epochs=2),
                           promotion="always", self_edit_max_new_tokens=8, probe_max_new_tokens=8, replay_ratio=1.0,
                           thresholds=GateThresholds(probe_metric="loglik", max_earlier_drop=0.0,
                                                     max_kl_to_promoted=0.5))
    learner.constraints = [lambda outputs: None]
    reports = [learner.adapt(labelled, self_edits=[EDIT_A]),
               learner.adapt(unlabelled)]  # the model writes the self-edit and the probe; a replays
    assert reports[1].probe_kind in ("self_written", "cloze")
    seen = "\n".join(backend.texts)
    assert "Which valley?" in seen and "Quorn canal" in seen  # the recorder sees the gate half and the texts
    assert MARK not in seen
    stored = [p for p in learner.registry.root.rglob("*") if p.is_file()]
    assert any("Which valley?" in p.read_text(errors="replace") for p in stored)
    assert [p.name for p in stored if MARK in p.read_text(errors="replace")] == []


def test_a_total_budget_is_measured_against_the_base_model_and_leaves_the_promoted_model_loaded(
        tmp_path, tiny_model_dir, tiny_tokenizer, caplog):
    from transformers import AutoModelForCausalLM

    from seal_trl.continual.regression import RegressionSuite, regression_scores

    tiny_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    suite = RegressionSuite("The sea is wide. Ships sail on it every day. Harbours keep them safe at night.",
                            (("What sails on the sea?", ("ships", "trees", "stones"), 0),))
    base = regression_scores(tiny_model, tiny_tokenizer, suite)
    naive = make_learner(tmp_path / "reg", tiny_model, tiny_tokenizer, promotion="always", check_regression=True)
    naive.suite = suite
    first = naive.adapt(DOC_A, self_edits=[EDIT_A])
    promoted_regression = naive.registry.get(first.version)["metrics"]["after"]["regression"]
    assert promoted_regression["perplexity"] != pytest.approx(base["perplexity"])  # the promotion changed it
    budget = GateThresholds(probe_metric="loglik", max_perplexity_increase=1e6, max_qa_drop=1e6,
                            max_total_perplexity_increase=0.0, max_total_qa_drop=1e6)
    # a learner resumed on the registry measures the base model with the chain switched off, then loads it back
    learner = ContinualLearner(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                               AdapterRegistry(tmp_path / "reg"),
                               ContinualConfig(replay_ratio=0.0, anchor_weight=0.0, thresholds=budget), FAST,
                               regression_suite=suite)
    assert learner.sync() == first.version
    promoted_logits = logits(learner, tiny_tokenizer)
    # a measurement that fails half way (interrupted, out of memory) leaves the promoted chain loaded, not the base
    import seal_trl.continual.learner as learner_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = learner_module.regression_scores
    learner_module.regression_scores = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            learner.base_regression_scores()
    finally:
        learner_module.regression_scores = real
    assert torch.equal(logits(learner, tiny_tokenizer), promoted_logits)
    assert learner.base_regression_scores() == pytest.approx(base)
    assert torch.equal(logits(learner, tiny_tokenizer), promoted_logits)
    with caplog.at_level(logging.WARNING, logger="seal_trl.continual.learner"):
        report = learner.adapt(DOC_A, self_edits=[EDIT_A])
    over = promoted_regression["perplexity"] > base["perplexity"]  # the budget on perplexity is 0: any rise spends it
    assert any("already over the total regression budget" in r.getMessage() for r in caplog.records) == over
    entry = learner.registry.get(report.version)
    assert entry["metrics"]["before"]["base_regression"] == pytest.approx(base)
    total = next(o for o in report.verdict.objectives if o.name == "total_perplexity")
    rise = report.after["regression"]["perplexity"] / base["perplexity"] - 1
    assert total.value == pytest.approx(rise) and total.passed == (rise <= 0.0)
    assert report.promoted == report.verdict.passed
    with pytest.raises(ValueError, match="check_regression"):
        ContinualConfig(check_regression=False, thresholds=budget)
