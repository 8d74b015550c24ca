"""The KL anchor: zero against its own reference, a gradient toward it, less drift on general text."""

from __future__ import annotations

import pytest
import torch

from seal_trl.continual.anchor import KLAnchor, write_anchor_texts
from seal_trl.continual.learner import ContinualConfig

from test_continual_learner import DOC_A, EDIT_A, make_learner

GENERAL = ("The market opens early and the bakers bring warm bread for the first customers.",
           "A bicycle has two wheels, pedals and a chain that turns the back wheel when you ride.")


def anchor_kl(learner, texts) -> float:
    """KL(promoted || candidate) on `texts`, the candidate adapter as it is now."""
    saved = learner.inner.adapter_state_dict()
    learner.inner.reset_adapter(0)
    anchor = KLAnchor.from_model(learner.model, learner.tokenizer, texts)
    learner.inner.load_candidate(saved)
    with torch.no_grad():
        return sum(float(anchor.loss(learner.model)) for _ in texts) / len(texts)


def test_anchor_is_zero_on_its_reference_and_pulls_back_after_a_change(tiny_model, tiny_tokenizer):
    anchor = KLAnchor.from_model(tiny_model, tiny_tokenizer, GENERAL)
    assert anchor.num_tokens > 10
    assert float(anchor.loss(tiny_model).detach()) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        tiny_model.lm_head.weight.add_(0.05 * torch.randn_like(tiny_model.lm_head.weight))
    loss = anchor.loss(tiny_model)
    assert float(loss.detach()) > 1e-3
    loss.backward()
    assert tiny_model.lm_head.weight.grad.abs().sum() > 0


def test_anchor_rejects_no_text(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="at least one"):
        KLAnchor.from_model(tiny_model, tiny_tokenizer, ["x"])  # one token: nothing to predict


def test_model_writes_its_own_anchor_texts(tiny_model, tiny_tokenizer):
    texts = write_anchor_texts(tiny_model, tiny_tokenizer, ["Describe a garden.", "Explain rain."], max_new_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)


def test_anchor_keeps_the_candidate_closer_on_general_text(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    drift = {}
    for weight in (0.0, 5.0):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        learner = make_learner(tmp_path / str(weight), model, tiny_tokenizer, promotion="never",
                               anchor_weight=weight, anchor_texts=GENERAL)
        report = learner.adapt(DOC_A, self_edits=[EDIT_A])
        assert (learner.inner.anchor is not None) == (weight > 0)
        assert learner.registry.get(report.version)["metrics"]["config"]["anchor_weight"] == weight
        learner.inner.load_candidate(learner.registry.load_adapter(report.version))
        drift[weight] = anchor_kl(learner, GENERAL)
    assert drift[0.0] > 0
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_config_checks_anchor_fields():
    with pytest.raises(ValueError, match="anchor_weight"):
        ContinualConfig(anchor_weight=-1)
    assert ContinualConfig(anchor_texts=("a", "  ")).anchor_texts == ("a",)


def test_a_learner_refuses_anchor_texts_too_short_to_anchor_when_it_starts(tmp_path, tiny_model, tiny_tokenizer):
    """Refused by the constructor, not at the first training step after the model and registry are set up; with
    the anchor off the same texts are never read."""
    with pytest.raises(ValueError, match="anchor_texts"):
        make_learner(tmp_path / "on", tiny_model, tiny_tokenizer, anchor_texts=("a", "b"))
    make_learner(tmp_path / "off", tiny_model, tiny_tokenizer, anchor_weight=0.0, anchor_texts=("a", "b"))
    make_learner(tmp_path / "one", tiny_model, tiny_tokenizer, anchor_texts=("a", GENERAL[0]))
