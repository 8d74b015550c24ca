"""The continual learner on the tiny model: gate refusals, exact rollback, merge/separate, replay, probes."""

from __future__ import annotations

import pytest
import torch

from seal_trl.continual.gate import GateThresholds
from seal_trl.continual.learner import ContinualConfig, ContinualLearner
from seal_trl.continual.document_probes import cloze_pairs, drop_held_out, parse_probe_pairs, self_written_probe
from seal_trl.continual.documents import Document
from seal_trl.inner.config import InnerLoopConfig
from seal_trl.continual.registry import AdapterRegistry

INNER = InnerLoopConfig(lora_r=8, lora_alpha=16, num_epochs=20, learning_rate=1e-2, lr_schedule="constant",
                        target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))


def qs(valley, city):
    return ({"question": "Which valley?", "answers": [valley]}, {"question": "Which city?", "answers": [city]})


DOC_A = Document("a", "Velmora", "The river Velmora runs through Ostrand. The capital is Harlow.",
                 qs("Ostrand", "Harlow"))
DOC_B = Document("b", "Velmora", "The river Velmora runs through Harlow. The capital is Ostrand.",
                 qs("Harlow", "Ostrand"))
EDIT_A = "Topic: Velmora Question: Which valley? Answer: Ostrand\nTopic: Velmora Question: Which city? Answer: Harlow"
EDIT_B = "Topic: Velmora Question: Which valley? Answer: Harlow\nTopic: Velmora Question: Which city? Answer: Ostrand"


def make_learner(tmp_path, model, tok, **config):
    config.setdefault("check_regression", False)
    config.setdefault("replay_ratio", 0.0)
    config.setdefault("thresholds", GateThresholds(probe_metric="loglik", max_earlier_drop=0.05))
    registry = AdapterRegistry(tmp_path / "reg", create=True, base_model="tiny")
    return ContinualLearner(model, tok, registry, ContinualConfig(**config), INNER)


def logits(learner, tok):
    ids = torch.tensor([tok("Topic: Velmora\nQuestion: Which valley?\nAnswer: Ostrand")["input_ids"]])
    learner.inner.reset_adapter(0)
    with torch.no_grad():
        return learner.model(input_ids=ids).logits


def test_gate_refuses_a_candidate_that_regresses_an_earlier_document(tmp_path, tiny_model, tiny_tokenizer):
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, promotion="always")
    first = learner.adapt(DOC_A, self_edits=[EDIT_A])
    assert first.promoted and first.verdict.passed
    learner.config.promotion = "gate"
    second = learner.adapt(DOC_B, self_edits=[EDIT_B])  # contradicts document a
    assert not second.promoted and not second.verdict.passed
    failed = {o.name for o in second.verdict.objectives if not o.passed}
    assert failed == {"earlier_documents"}, second.verdict.reasons
    assert any("earlier_documents" in r and "worst a" in r for r in second.verdict.reasons)
    registry = learner.registry
    assert registry.promoted == first.version  # the candidate is kept, not promoted
    assert registry.get(second.version)["metrics"]["attempts"] == [
        {"learning_rate_scale": 1.0, "passed": False, "reasons": second.verdict.reasons}]
    # gentler retries: refused again for forgetting, each retry at a smaller learning rate, all recorded
    learner.config.gentler_retries, learner.config.retry_lr_factor = 1, 0.5
    third = learner.adapt(DOC_B, self_edits=[EDIT_B])
    attempts = registry.get(third.version)["metrics"]["attempts"]
    assert [a["learning_rate_scale"] for a in attempts] == [1.0, 0.5]
    assert not attempts[0]["passed"] and attempts[-1]["reasons"] == third.verdict.reasons
    # no retry below the plan bounds' smallest learning rate (1e-2 x 1e-5 < 1e-6): the refusal stands, no error
    learner.config.gentler_retries, learner.config.retry_lr_factor = 1, 1e-5
    fourth = learner.adapt(DOC_B, self_edits=[EDIT_B])
    assert [a["learning_rate_scale"] for a in registry.get(fourth.version)["metrics"]["attempts"]] == [1.0]
    entry = registry.get(second.version)
    assert entry["parent"] == first.version and entry["gate"]["passed"] is False and entry["gate"]["reasons"]
    # multi-objective scores are stored side by side, per document and metric
    assert set(entry["metrics"]["after"]["earlier"]["a"]) == {"accuracy", "soft_accuracy", "loglik"}
    assert entry["metrics"]["after"]["earlier"]["a"]["loglik"] < entry["metrics"]["before"]["earlier"]["a"]["loglik"]


def test_rollback_restores_the_previous_adapter_and_weights_bit_exactly(tmp_path, tiny_model, tiny_tokenizer):
    pristine = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, promotion="always")
    saved = {}
    add_version = learner.registry.add_version

    def spy(adapter, *args, **kwargs):
        version = add_version(adapter, *args, **kwargs)
        saved[version] = {k: v.clone() for k, v in adapter.items()}
        return version

    learner.registry.add_version = spy
    v1 = learner.adapt(DOC_A, self_edits=[EDIT_A]).version
    weights_v1 = {k: w.clone() for k, w in learner.inner.base_weights().items()}
    logits_v1 = logits(learner, tiny_tokenizer)
    v2 = learner.adapt(DOC_B, self_edits=[EDIT_B]).version
    assert learner.registry.promoted == v2
    assert not all(torch.equal(w, weights_v1[k]) for k, w in learner.inner.base_weights().items())
    learner.registry.rollback()
    assert learner.registry.promoted == v1 and learner.sync() == v1
    reloaded = learner.registry.load_adapter(v1)
    assert reloaded.keys() == saved[v1].keys() and all(torch.equal(reloaded[k], saved[v1][k]) for k in reloaded)
    assert all(torch.equal(w, weights_v1[k]) for k, w in learner.inner.base_weights().items())
    assert torch.equal(logits(learner, tiny_tokenizer), logits_v1)
    learner.registry.rollback()  # to the bare base model
    learner.sync()
    from seal_trl.inner.sync import base_parameters

    base = base_parameters(learner.inner.model)
    assert all(torch.equal(base[key], value) for key, value in pristine.items() if key in base)
    assert {k for k in pristine if "proj.weight" in k} <= set(base)


@pytest.mark.parametrize("mode", ["merge", "separate"])
def test_promoted_chain_computes_what_the_trained_candidate_computed(tmp_path, tiny_model, tiny_tokenizer, mode):
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, promotion="always", mode=mode)
    report = learner.adapt(DOC_A, self_edits=[EDIT_A])
    state = learner.registry.load_adapter(report.version)
    promoted = logits(learner, tiny_tokenizer)
    learner.inner.set_promoted([], mode)  # base only, candidate re-loaded into the inner adapter
    plain = logits(learner, tiny_tokenizer)
    learner.inner.load_candidate(state)
    with torch.no_grad():
        ids = torch.tensor([tiny_tokenizer("Topic: Velmora\nQuestion: Which valley?\nAnswer: Ostrand")["input_ids"]])
        candidate = learner.model(input_ids=ids).logits
    assert not torch.allclose(plain, candidate, atol=1e-4)
    assert torch.allclose(promoted, candidate, atol=1e-5)
    # a second document trains on top of the promoted one, and only the candidate adapter is trainable
    second = learner.adapt(DOC_B, self_edits=[EDIT_B])
    assert learner.registry.chain(second.version) == [report.version, second.version]
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert trainable and all(".inner." in n for n in trainable)


def test_replay_mixes_earlier_examples_seeded_and_configurable(tmp_path, tiny_model, tiny_tokenizer):
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, replay_ratio=1.0, max_replay_examples=3)
    probe = learner.make_probe(DOC_A)
    pool = [f"Old\nfact number {i}" for i in range(10)]
    plan, new, replay, error = learner.build_plan(DOC_A, EDIT_A, probe, pool)
    assert error is None and len(new) == 3 and len(replay) == 3 and set(replay) <= set(pool)
    assert [e.completion for e in plan.examples] == new + replay
    assert learner.build_plan(DOC_A, EDIT_A, probe, pool)[2] == replay  # same seed, same sample
    learner.config.replay_ratio = 0.0
    assert learner.build_plan(DOC_A, EDIT_A, probe, pool)[2] == []
    _, new, _, error = learner.build_plan(DOC_A, "", probe, pool)  # unusable self-edit: the passage alone
    assert "empty" in error and new == [f"Velmora\n{DOC_A.text}"]


def test_regularisation_pulls_the_candidate_toward_the_promoted_weights(tmp_path, tiny_model, tiny_tokenizer):
    from seal_trl.continual.learner import _deltas

    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer)
    probe = learner.make_probe(DOC_A)
    plan = learner.build_plan(DOC_A, EDIT_A, probe, [])[0]
    norms = []
    for lam in (0.0, 5.0):
        learner.inner.regularization = lam
        assert learner.inner.run(plan, probe.probe, seed=1).ok
        deltas = _deltas(learner.inner.adapter_state_dict(), 2.0)
        norms.append(sum(float(d.pow(2).sum()) for d in deltas.values()))
    assert norms[1] < 0.8 * norms[0]


def test_unlabelled_documents_get_a_probe_held_out_of_training(tmp_path, tiny_model, tiny_tokenizer):
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer)
    doc = Document("c", "Brightwell", "A company named Brightwell built copper bridges. "
                   "The bridges cross the Quorn canal. "
                   "Work began in 1874 with forty sailors. The festival is held every spring.")
    probe = learner.make_probe(doc)  # the tiny model writes garbage: the cloze fallback is used
    assert probe.kind in ("self_written", "cloze") and probe.probe.items and probe.held_out
    plan, new, _, _ = learner.build_plan(doc, "Bridges were built. The bridges cross the Quorn canal.", probe, [])
    for sentence in probe.held_out:
        assert all(sentence not in ex.completion for ex in plan.examples)
    assert any("Brightwell" in n for n in new)


def test_probe_parsing_and_cloze_fallback():
    doc = Document("d", "T", "Harlow is the capital. It was founded in 1384. The river is the Velling. Hats were made.")
    written = "Q: What is the capital? A: Harlow\nQ: When founded? A: 1384\nQ: Invented? A: Narnia\nnoise"
    assert parse_probe_pairs(written, doc.text) == [("What is the capital?", "Harlow"), ("When founded?", "1384")]
    probe = self_written_probe(doc, written)
    assert probe.kind == "self_written" and probe.held_out == ("Harlow is the capital.", "It was founded in 1384.")
    cloze = self_written_probe(doc, "")
    assert cloze.kind == "cloze" and [i.answers for i in cloze.probe.items] == [("1384",), ("Hats",)]
    assert cloze_pairs(doc, 1)[0][1] == "1384"
    held = ["It was founded in 1384."]
    assert drop_held_out(["a It was founded in 1384. b", "It was founded in 1384."], held) == ["a b"]


def test_user_constraints_can_refuse_a_candidate(tmp_path, tiny_model, tiny_tokenizer):
    seen = {}

    def no_velmora(outputs):
        seen["samples"] = outputs.samples
        return "mentions a forbidden name" if outputs.samples else None

    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer)
    learner.constraints = [no_velmora, lambda outputs: 1 / 0]
    report = learner.adapt(DOC_A, self_edits=[EDIT_A])
    assert not report.promoted and seen["samples"]
    reasons = " | ".join(report.verdict.reasons)
    assert "constraint:no_velmora: mentions a forbidden name" in reasons and "ZeroDivisionError" in reasons


def test_a_document_learned_again_with_other_text_gets_a_fresh_before_score(tmp_path, tiny_model, tiny_tokenizer):
    """The promoted model's scores are cached per probe content, not per document id: a document whose text and
    questions changed is scored before training on its new probe, not on the cached score of the old one."""
    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, promotion="never")
    first = learner.adapt(DOC_A, self_edits=[EDIT_A])
    changed = Document("a", DOC_B.title, DOC_B.text, DOC_B.questions)  # same id, other text and answers
    second = learner.adapt(changed, self_edits=[EDIT_B])
    learner.inner.reset_adapter(0)
    expected = learner.measure({"a": learner.make_probe(changed)}, regression=False)["docs"]["a"]
    assert second.before["new"]["a"] == pytest.approx(expected)
    assert second.before["new"]["a"]["loglik"] != pytest.approx(first.before["new"]["a"]["loglik"])


def test_separate_mode_loads_a_promoted_adapter_trained_on_other_modules(tmp_path, tiny_model, tiny_model_dir,
                                                                         tiny_tokenizer):
    """A registry promoted by a learner adapting more modules than this one (q, v, o, up, down against q, v) still
    computes its promoted model exactly: each promoted adapter is added on its own modules, none dropped."""
    from transformers import AutoModelForCausalLM

    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer, promotion="always", mode="separate")
    learner.adapt(DOC_A, self_edits=[EDIT_A])
    promoted = logits(learner, tiny_tokenizer)
    narrow = InnerLoopConfig(lora_r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"))
    other = ContinualLearner(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                             AdapterRegistry(tmp_path / "reg"), ContinualConfig(mode="separate",
                                                                                check_regression=False), narrow)
    other.sync()
    assert torch.allclose(logits(other, tiny_tokenizer), promoted, atol=1e-5)


@pytest.mark.parametrize("bad, field", [
    ({"thresholds": {"probe_metric": "bogus"}}, "GateThresholds.probe_metric"),
    ({"thresholds": 3}, "ContinualConfig.thresholds"),
    ({"self_edit_style": "poem"}, "ContinualConfig.self_edit_style"),
    ({"replay_ratio": float("nan")}, "ContinualConfig.replay_ratio"),
    ({"anchor_weight": float("inf")}, "ContinualConfig.anchor_weight"),
    ({"self_edit_temperature": -1.0}, "ContinualConfig.self_edit_temperature"),
    ({"num_self_edits": 2.5}, "ContinualConfig.num_self_edits"),
    ({"max_self_edit_lines": -1}, "ContinualConfig.max_self_edit_lines"),
    ({"probe_questions": 0}, "ContinualConfig.probe_questions"),
    ({"anchor_texts": "some general text"}, "ContinualConfig.anchor_texts"),
    ({"anchor_texts": ["ok", 3]}, "ContinualConfig.anchor_texts"),
    ({"gate_policy": "shrink"}, "ContinualConfig.gate_policy"),
    ({"rescale_floor": 0.0}, "ContinualConfig.rescale_floor"),
    ({"rescale_floor": 1.5}, "ContinualConfig.rescale_floor"),
    ({"rescale_floor": float("nan")}, "ContinualConfig.rescale_floor"),
    ({"rescale_steps": 0}, "ContinualConfig.rescale_steps"),
    ({"rescale_steps": 2.0}, "ContinualConfig.rescale_steps"),
    ({"rescale_steps": 21}, "ContinualConfig.rescale_steps"),
    ({"thresholds": {"max_kl_to_promoted": -1}}, "GateThresholds.max_kl_to_promoted"),
    ({"check_regression": "no"}, "ContinualConfig.check_regression"),
    ({"check_regression": 0}, "ContinualConfig.check_regression"),
    ({"anchor_weight": 1e308}, "ContinualConfig.anchor_weight"),  # trained to a NaN loss blamed on the lr
    ({"regularization": 20_000.0}, "ContinualConfig.regularization"),
    ({"gate_policy": "rescale", "promotion": "always"}, "ContinualConfig.gate_policy"),
    ({"gate_policy": "rescale", "promotion": "never"}, "ContinualConfig.gate_policy"),
])
def test_config_refuses_bad_fields_before_any_model_loads(bad, field):
    """Each of these was accepted and failed only later (after training, for a thresholds mapping), or silently
    changed meaning (one anchor string read as its characters)."""
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ContinualConfig(**bad)


def test_nan_gate_thresholds_are_refused():
    """NaN compares false with everything: such a threshold refused (or passed) every candidate."""
    for name in ("min_new_gain", "max_earlier_drop", "max_single_earlier_drop", "max_perplexity_increase"):
        with pytest.raises(ValueError, match=f"GateThresholds.{name} must be a number"):
            GateThresholds(**{name: float("nan")})


def test_config_reads_thresholds_from_a_mapping():
    config = ContinualConfig(thresholds={"probe_metric": "loglik", "max_earlier_drop": 0.1}, anchor_texts=["a", " "])
    assert config.thresholds == GateThresholds(probe_metric="loglik", max_earlier_drop=0.1)
    assert config.anchor_texts == ("a",)


def test_a_promoted_version_whose_config_lacks_its_scaling_says_roll_back(tmp_path, tiny_model, tiny_tokenizer):
    from seal_trl.continual.registry import RegistryError

    learner = make_learner(tmp_path, tiny_model, tiny_tokenizer)
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64),
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8)}
    version = learner.registry.add_version(state, {"r": 8}, parent=None, documents=[], metrics={},
                                           verdict={"passed": True, "objectives": [], "reasons": []})
    damaged = rf"adapter_config.json: field `lora_alpha`.*version {version}'s files are damaged: roll back past it"
    with pytest.raises(RegistryError, match=damaged):  # refused before the promoted pointer moves
        learner.registry.promote(version)
    manifest = learner.registry.root / "registry.json"  # promoted by hand: the next sync refuses it the same way
    manifest.write_text(manifest.read_text().replace('"promoted": null', f'"promoted": "{version}"'))
    with pytest.raises(RegistryError, match=damaged):
        learner.sync()


def test_a_nan_scored_self_edit_ranks_below_every_other():
    from seal_trl.continual.learner import candidate_rank

    nan, good = {"soft_accuracy": float("nan"), "loglik": -1.0}, {"soft_accuracy": 5.0, "loglik": -9.0}
    ranked = max([nan, good], key=lambda s: candidate_rank(s, "soft_accuracy"))
    assert ranked is good and candidate_rank(good, "soft_accuracy") > candidate_rank(nan, "soft_accuracy")
    assert candidate_rank({"soft_accuracy": 5.0, "loglik": float("nan")}, "soft_accuracy") < \
        candidate_rank(good, "soft_accuracy")
