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


def _content_words(question: str) -> set[str]:
    import re

    stop = {"what", "which", "how", "many", "is", "are", "there", "the", "a", "an", "in", "of", "do", "does", "you",
            "we", "to", "on", "at", "from", "into", "our", "your", "called", "call", "usually", "most", "by", "with",
            "it", "for", "be", "and", "or", "give", "write", "explain", "describe", "about", "why", "people", "have",
            "has", "often"}
    words = (w for w in re.findall(r"[a-z]+", question.lower()) if w not in stop)
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}  # plurals read as their singular


def test_the_default_anchor_asks_none_of_the_regression_suites_questions():
    """The anchor holds the model's answers to its prompts where they were: a prompt that is one of the suite's
    questions (or a rewording of it) would hold the very answers the gate's QA check reads for forgetting."""
    from seal_trl.continual.anchor import GENERIC_PROMPTS
    from seal_trl.continual.regression import RegressionSuite

    suite = [item[0] for item in RegressionSuite.bundled().qa]
    clashes = []
    for prompt in GENERIC_PROMPTS:
        mine = _content_words(prompt)
        for question in suite:
            shared = mine & _content_words(question)
            if len(shared) >= 2 or (shared and len(shared) == len(_content_words(question))):
                clashes.append((prompt, question))
    assert not clashes
    # this test's comparison reads a rewording as the same question (the learner's check does not: it matches words)
    assert _content_words("What do caterpillars turn into?") == _content_words("What does a caterpillar turn into?")


def test_a_learner_refuses_an_anchor_that_asks_the_suites_questions(tmp_path, tiny_model, tiny_tokenizer):
    from seal_trl.continual.anchor import check_anchor_apart
    from seal_trl.continual.regression import RegressionSuite

    suite = RegressionSuite.bundled()
    asked = suite.qa[1][0]
    texts = ["Rivers run to the sea.", f"Quiz time. {asked.upper()}  The answer is seven."]
    with pytest.raises(ValueError, match="anchor text 2 \\(field `anchor_texts`\\) asks the regression suite's question"):
        make_learner(tmp_path, tiny_model, tiny_tokenizer, anchor_weight=1.0, anchor_texts=texts,
                     check_regression=True)
    # no regression check: nothing for the anchor to bias
    make_learner(tmp_path / "off", tiny_model, tiny_tokenizer, anchor_weight=1.0, anchor_texts=texts)
    check_anchor_apart(["Why? Because."], ["Why?"])  # too short a question to match anything


def test_the_anchor_check_matches_whole_words_whatever_the_spelling():
    """A suite question is found in an anchor text through case, spacing, punctuation, full-width letters and
    invisible characters; a text that only contains its words inside longer ones is not refused."""
    from seal_trl.continual.anchor import AnchorClash, check_anchor_apart

    questions = ["What is the opposite of up?", "Which fruit is long, curved and yellow?"]
    caught = ["Quiz: WHAT   is the\nopposite of up ?!", "Which fruit is long curved and yellow", "which fruit is long , "
              "curved and yellow.", "\uff37\uff48\uff41\uff54 is the opposite of up\uff1f", "What is the oppo\u00adsite "
              "of u\u200bp?"]
    for text in caught:
        with pytest.raises(AnchorClash, match="anchor text 2 .* asks the regression suite's question") as clash:
            check_anchor_apart(["Rivers run to the sea.", text], questions)
        assert clash.value.index == 1 and clash.value.text == text, text
    for text in ["What is the opposite of upstairs?", "What is the opposite of uptown?", "Which fruit is long, curved"]:
        check_anchor_apart([text], questions)
    with pytest.raises(AnchorClash, match="the default anchor prompt 'What is the tallest animal in the world\\?' asks"):
        check_anchor_apart(None, ["What is the tallest animal in the world?"])
    with pytest.raises(TypeError, match="list of strings"):
        check_anchor_apart("What is the opposite of up?", questions)
    with pytest.raises(TypeError, match="questions must be strings"):
        check_anchor_apart(["Rivers."], [None])
