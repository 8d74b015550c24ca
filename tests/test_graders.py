import pytest
import torch

from seal_trl.inner.graders import (
    AnswerMatchGrader,
    JudgeGrader,
    LogLikelihoodGrader,
    exact_match,
    greedy_answers,
    make_grader,
    normalize_answer,
    token_f1,
)
from seal_trl.inner.tensors import IGNORE_INDEX, encode_example, pad_left, pad_right
from seal_trl.probes import Probe, ProbeError, ProbeItem, knowledge_probe


def test_squad_normalisation_and_metrics():
    assert normalize_answer("The  Velmora River!") == "velmora river"
    assert exact_match("the Velmora river", "Velmora River.") == 1.0
    assert exact_match("Velmora", "Ostrand") == 0.0
    assert token_f1("the red stone bridge", "red bridge") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", "x") == 0.0


def test_probe_needs_questions_and_answers():
    with pytest.raises(ProbeError, match="no questions"):
        knowledge_probe("T", [], context_id="c")
    with pytest.raises(ProbeError, match="answers"):
        Probe(items=(ProbeItem(prompt="q", answers=()),))
    with pytest.raises(ProbeError, match="question"):
        knowledge_probe("T", [{"question": "", "answers": [{"text": "x"}]}])
    probe = knowledge_probe("Velmora", [{"question": "Which river?", "answers": [{"text": "Velmora"}]}])
    assert probe.items[0].prompt == "Topic: Velmora\nQuestion: Which river?\nAnswer:"


def test_encode_masks_prompt_and_padding(tiny_tokenizer):
    a = encode_example(tiny_tokenizer, "Question: x\nAnswer:", " 1874", loss_on_prompt=False, add_eos=True)
    n_prompt = len(tiny_tokenizer("Question: x\nAnswer:")["input_ids"])
    assert a.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert a.labels[n_prompt:] == a.input_ids[n_prompt:] and a.input_ids[-1] == tiny_tokenizer.eos_token_id
    b = encode_example(tiny_tokenizer, "", "a longer plain text example here", loss_on_prompt=True, add_eos=False)
    batch = pad_right([a, b], tiny_tokenizer.pad_token_id)
    short = 0 if len(a.input_ids) < len(b.input_ids) else 1
    n = min(len(a.input_ids), len(b.input_ids))
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][short, n:] == 0).all()
    assert batch["input_ids"].shape[1] == max(len(a.input_ids), len(b.input_ids))
    left = pad_left([[1, 2], [3]], 0)
    assert left["input_ids"].tolist() == [[1, 2], [0, 3]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_loglik_matches_a_direct_computation(tiny_model, tiny_tokenizer):
    probe = knowledge_probe("T", [("Which year?", ["1874", "1921"]), ("Which colour?", "red")])
    value = LogLikelihoodGrader(batch_size=2).score(tiny_model, tiny_tokenizer, probe)

    def mean_logp(prompt, answer):
        p = tiny_tokenizer(prompt)["input_ids"]
        a = tiny_tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.no_grad():
                logp = torch.log_softmax(tiny_model(ids).logits[0, :-1].float(), -1)
        return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)) / len(a))

    expected = (
        max(mean_logp(probe.items[0].prompt, "1874"), mean_logp(probe.items[0].prompt, "1921"))
        + mean_logp(probe.items[1].prompt, "red")
    ) / 2
    assert value == pytest.approx(expected, abs=1e-4)


def test_greedy_answers_are_batch_independent(tiny_model, tiny_tokenizer):
    prompts = ["Question: what?\nAnswer:", "Topic: a much longer topic line here\nQuestion: who?\nAnswer:"]
    together = greedy_answers(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6)
    alone = [greedy_answers(tiny_model, tiny_tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone and all("\n" not in a for a in together)


def test_answer_match_grader_scores_predictions(tiny_model, tiny_tokenizer, monkeypatch):
    import seal_trl.inner.graders as graders

    monkeypatch.setattr(graders, "greedy_answers", lambda *a, **k: ["The Velmora", "wrong"])
    probe = knowledge_probe("T", [("q1", "velmora"), ("q2", "1874")])
    assert AnswerMatchGrader("exact_match").score(tiny_model, tiny_tokenizer, probe) == 0.5
    assert AnswerMatchGrader("f1").score(tiny_model, tiny_tokenizer, probe) == 0.5


def test_judge_follows_yes_no_logits(tiny_model, tiny_tokenizer):
    judge = JudgeGrader(tiny_model, tiny_tokenizer)
    yes_id = judge._yes[0]
    no_id = judge._no[0]
    bias = torch.zeros(tiny_model.config.vocab_size)
    bias[yes_id] = 50.0
    handle = tiny_model.register_forward_hook(lambda m, i, o: o.__setitem__("logits", o.logits + bias) or o)
    assert judge.verdicts(["q"], ["a"], ["a"]) == [True]
    handle.remove()
    bias.zero_()
    bias[no_id] = 50.0
    handle = tiny_model.register_forward_hook(lambda m, i, o: o.__setitem__("logits", o.logits + bias) or o)
    assert judge.verdicts(["q", "q2"], ["a", "b"], ["a", "c"]) == [False, False]
    handle.remove()


def test_make_grader_errors():
    with pytest.raises(ValueError, match="judge"):
        make_grader("judge")
    with pytest.raises(ValueError, match="unknown grader"):
        make_grader("bleu")
