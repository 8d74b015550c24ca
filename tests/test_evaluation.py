"""Held-out evaluation: sampled self-edits averaged per passage, QA metrics of the adapted model, the base policy's
self-edits, and the paired report (tables, JSON, chart) on constructed numbers."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.evaluation import (answer_contained, default_reference, evaluate_methods, matched_copies, qa_scores,
                                 resolve_temperature)
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.probes import knowledge_probe
from seal_trl.reporting import paired_table, write_report
from seal_trl.seeding import derive_seed
from seal_trl.stats import paired_comparison
from seal_trl.tasks.knowledge import KnowledgeTask
from seal_trl.tasks.squad import load_bundled

EDITS = ["The passage names a place.\nIt has a date.", "A person is named.\nThey built it.", "Ships left port."]


def make_loop(model_dir, tokenizer, **overrides):
    config = InnerLoopConfig(lora_r=4, lora_alpha=8, num_epochs=1, max_new_tokens=4, **overrides)
    return InnerLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, config)


# ----- pure pieces -----------------------------------------------------------------------------------------------
def test_qa_scores_of_constructed_answers():
    probe = knowledge_probe("T", [("Who?", ["Mira Tollund", "Tollund"]), ("When?", "1887"), ("Where?", "Harrowmere")])
    scores = qa_scores(["It was Mira Tollund.", "18870", "harrowmere"], probe)
    # contained: "mira tollund" as whole words yes; "1887" inside "18870" no; case/punctuation normalised yes
    assert scores["contained"] == pytest.approx(2 / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)  # only "harrowmere"
    assert scores["f1"] == pytest.approx((2 * (2 / 4) * 1 / (2 / 4 + 1) + 0 + 1) / 3)  # "it was mira tollund" vs gold
    assert answer_contained("the tollund family", "Tollund") == 1.0 and answer_contained("", "x") == 0.0


def test_default_reference_and_temperature():
    assert default_reference(["none", "passage", "base-self-edit", "self-edit"]) == "base-self-edit"
    assert default_reference(["none", "passage", "self-edit"]) == "passage"
    assert default_reference(["self-edit", "teacher"]) == "self-edit"
    assert resolve_temperature(1, None) == 0.0 and resolve_temperature(4, None) == 1.0
    assert resolve_temperature(4, 0.7) == 0.7
    with pytest.raises(ValueError, match="temperature > 0"):
        resolve_temperature(3, 0.0)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        resolve_temperature(0, None)


# ----- evaluate_methods on the tiny model ------------------------------------------------------------------------
def test_sampled_self_edits_are_seeded_per_passage_and_sample_and_averaged(tiny_model_dir, tiny_tokenizer,
                                                                          monkeypatch):
    contexts = load_bundled("validation")[:2]
    calls = []
    sample_of = {derive_seed(5, "sample", s): s for s in range(3)}

    def fake_generate(model, tok, task, ctx, *, max_new_tokens, temperature, seed):
        calls.append((ctx[0]["context_id"], temperature, seed))
        return [EDITS[sample_of[seed]]]

    monkeypatch.setattr("seal_trl.evaluation.generate_self_edits", fake_generate)
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    scores, details = evaluate_methods(loop, KnowledgeTask(), contexts, ["self-edit"], policy=object(),
                                       tokenizer=tiny_tokenizer, samples=3, seed=5, progress=False)
    # every passage: 3 samples at temperature 1.0, sample s seeded by (seed, s); generate_self_edits adds the passage
    assert [c[1:] for c in calls] == [(1.0, derive_seed(5, "sample", s)) for s in range(3)] * 2
    assert [c[0] for c in calls] == [contexts[0]["context_id"]] * 3 + [contexts[1]["context_id"]] * 3
    per_sample = details["samples"]["self-edit"]
    assert [len(s) for s in per_sample] == [3, 3] and len(details["self_edits"]["self-edit"][0]) == 3
    assert scores["self-edit"] == pytest.approx([sum(s) / 3 for s in per_sample])
    assert len(set(details["self_edits"]["self-edit"][0])) > 1 and len(set(per_sample[0])) > 1  # not one draw
    assert details["sampling"] == {"samples": 3, "temperature": 1.0}


def test_greedy_single_self_edits_are_reproducible(tiny_model_dir, tiny_tokenizer):
    contexts = load_bundled("validation")[:2]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    runs = [evaluate_methods(loop, KnowledgeTask(), contexts, ["self-edit"], policy=policy, tokenizer=tiny_tokenizer,
                             max_new_tokens=6, samples=samples, seed=1, progress=False)[1]
            for samples in (1, 1, 2, 2)]
    assert runs[0]["sampling"]["temperature"] == 0.0
    assert runs[0]["self_edits"] == runs[1]["self_edits"] and runs[2]["self_edits"] == runs[3]["self_edits"]
    assert runs[2]["samples"] == runs[3]["samples"]


def test_batched_samples_of_one_prompt_are_seeded_and_distinct(tiny_model_dir, tiny_tokenizer):
    from seal_trl.generation import generate_text, generate_texts

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = KnowledgeTask().prompt(load_bundled("validation")[0])
    first = generate_texts(policy, tiny_tokenizer, prompt, n=4, max_new_tokens=8, temperature=1.0, seed=3)
    assert len(first) == 4 and len(set(first)) > 1  # n different samples, not one repeated
    assert generate_texts(policy, tiny_tokenizer, prompt, n=4, max_new_tokens=8, temperature=1.0, seed=3) == first
    greedy = generate_text(policy, tiny_tokenizer, prompt, max_new_tokens=8)
    assert generate_texts(policy, tiny_tokenizer, prompt, n=1, max_new_tokens=8) == [greedy]
    with pytest.raises(ValueError, match="temperature > 0"):
        generate_texts(policy, tiny_tokenizer, prompt, n=2, max_new_tokens=8)


def _adaptation_detector(loop, monkeypatch):
    """Replace greedy answers by a check of the model it is handed: adapted (logits moved) or not."""
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = loop.model(input_ids=ids).logits.clone()  # a fresh inner adapter is the identity

    def detect(model, tokenizer, prompts, *, max_new_tokens, **kwargs):
        with torch.no_grad():
            adapted = not torch.allclose(model(input_ids=ids).logits, base, atol=1e-6)
        return [("Velmora river" if adapted else "nothing")] * len(prompts)

    monkeypatch.setattr("seal_trl.evaluation.greedy_answers", detect)


@pytest.mark.parametrize("k", [1, 2])
def test_qa_metrics_are_read_while_the_adapter_is_in_place(tiny_model_dir, tiny_tokenizer, monkeypatch, k):
    contexts = [{"context_id": f"c{i}", "title": f"Place {i}", "context": f"The river Velmora {i} runs south.",
                 "questions": [{"question": "Which river?", "answers": ["Velmora"]}]} for i in range(3)]
    edits = {"c0": "Velmora is a river.\nIt runs south.", "c1": "", "c2": "The river is Velmora."}  # c1 fails
    monkeypatch.setattr("seal_trl.evaluation.generate_self_edits",
                        lambda model, tok, task, ctx, **kw: [edits[ctx[0]["context_id"]]])
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=k)
    _adaptation_detector(loop, monkeypatch)
    grader = loop.grader
    methods = ["none", "passage", "self-edit"]
    scores, details = evaluate_methods(loop, KnowledgeTask(), contexts, methods, policy=object(),
                                       tokenizer=tiny_tokenizer, qa_metrics=True, progress=False)
    qa = details["qa"]
    assert qa["none"]["contained"] == [0.0, 0.0, 0.0]
    assert qa["passage"]["contained"] == [1.0, 1.0, 1.0] and qa["passage"]["exact_match"] == [0.0] * 3
    assert qa["passage"]["f1"] == pytest.approx([2 / 3] * 3)
    assert details["errors"]["self-edit"][1] == ["empty"]
    assert qa["self-edit"]["contained"] == [1.0, 0.0, 1.0]  # the failed self-edit adapted nothing
    assert details["qa_samples"]["self-edit"][0][0]["answers"] == ["Velmora river"]
    assert loop.grader is grader  # the recorder is gone
    plain, _ = evaluate_methods(loop, KnowledgeTask(), contexts, methods, policy=object(), tokenizer=tiny_tokenizer,
                                progress=False)
    for method in methods:
        assert scores[method] == pytest.approx(plain[method], abs=1e-4)  # recording QA does not change the scores


def test_base_self_edits_are_written_with_the_adapter_switched_off(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.clone()
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    writers = {}

    def fake_generate(model, tok, task, ctx, **kw):
        with torch.no_grad():
            is_base = torch.allclose(model(input_ids=ids).logits, base_logits, atol=1e-6)
        writers.setdefault(kw["seed"], []).append(is_base)
        return [EDITS[0]]

    monkeypatch.setattr("seal_trl.evaluation.generate_self_edits", fake_generate)
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    contexts = load_bundled("validation")[:1]
    for method, expected in (("base-self-edit", True), ("self-edit", False)):
        writers.clear()
        evaluate_methods(loop, KnowledgeTask(), contexts, [method], policy=policy, tokenizer=tiny_tokenizer,
                         progress=False)
        assert [v for values in writers.values() for v in values] == [expected]
    with pytest.raises(ValueError, match="PEFT adapter"):
        evaluate_methods(loop, KnowledgeTask(), contexts, ["base-self-edit"], policy=policy.get_base_model(),
                         tokenizer=tiny_tokenizer, progress=False)


def test_names_let_later_methods_join_the_same_report(tiny_model_dir, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr("seal_trl.evaluation.generate_self_edits", lambda model, tok, task, ctx, **kw: [EDITS[0]])
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    contexts = load_bundled("validation")[:2]
    scores, details = {}, {}
    for methods, names in ((["none", "self-edit"], {"self-edit": "before"}), (["self-edit"], {"self-edit": "after"})):
        evaluate_methods(loop, KnowledgeTask(), contexts, methods, policy=object(), tokenizer=tiny_tokenizer,
                         names=names, scores=scores, details=details, progress=False)
    assert list(scores) == ["none", "before", "after"] and set(details["errors"]) == {"none", "before", "after"}
    assert all(len(v) == 2 for v in scores.values())


def test_matched_copies_match_tokens_per_context():
    tokens = {"passage": [[100], [50], [0], [100]], "seal": [[310, 290], [20], [40], [173]]}
    # 300/100; at least 1; no /0; to a hundredth of a copy
    assert matched_copies(tokens, passage="passage", matched_to="seal") == [3, 1, 1, 1.73]
    with pytest.raises(ValueError, match="'teacher' evaluated first"):
        matched_copies(tokens, passage="passage", matched_to="teacher")


def test_passage_matched_trains_the_passage_for_as_many_tokens_as_the_self_edits(tiny_model_dir, tiny_tokenizer,
                                                                                monkeypatch):
    long_edit = "\n".join(f"Fact {i}: the passage says something about its subject, number {i}." for i in range(12))
    monkeypatch.setattr("seal_trl.evaluation.generate_self_edits", lambda model, tok, task, ctx, **kw: [long_edit])
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    contexts = load_bundled("validation")[:2]
    scores, details = evaluate_methods(loop, KnowledgeTask(), contexts, ["passage", "self-edit", "passage-matched"],
                                       policy=object(), tokenizer=tiny_tokenizer, progress=False)
    tokens = details["train_tokens"]
    copies = details["matched_copies"]["passage-matched"]
    assert all(c >= 2 for c in copies)  # the self-edit (12 lines + the passage) trains on several passages' worth
    assert any(c != int(c) for c in copies)
    for i, c in enumerate(copies):
        once, matched, edit = tokens["passage"][i][0], tokens["passage-matched"][i][0], tokens["self-edit"][i][0]
        assert abs(matched - c * once) <= 0.05 * once  # the shortened last copy is its fraction of the passage
        assert abs(matched - edit) <= 0.05 * once  # so both train on the same tokens, not the nearest whole copy
    assert scores["passage-matched"] != scores["passage"]
    with pytest.raises(ValueError, match="list it after"):
        evaluate_methods(loop, KnowledgeTask(), contexts, ["passage-matched", "passage"], progress=False)


# ----- the paired report on constructed numbers -------------------------------------------------------------------
SCORES = {"none": [-6.0, -5.0, -7.0, -6.5], "passage": [-5.0, -4.5, -6.0, -5.5], "seal": [-4.0, -4.0, -5.5, -5.0]}
QA = {name: {"contained": [0.2, 0.4, 0.0, 0.2] if name == "none" else [0.6, 0.4, 0.2, 0.4],
             "exact_match": [0.0, 0.2, 0.0, 0.0], "f1": [0.1, 0.3, 0.0, 0.1]} for name in SCORES}


def test_paired_report_tables_json_and_chart(tmp_path):
    paths = write_report(tmp_path, title="t", scores=SCORES, metric="loglik", reference="passage",
                         passages=["A (`a`)", "B (`b`)", "C (`c`)", "D (`d`)"], qa=QA, seed=3,
                         details={"contexts": ["a", "b", "c", "d"]})
    text = paths["markdown"].read_text()
    seal = paired_comparison(SCORES["seal"], SCORES["passage"], seed=3)
    assert (f"| seal | -4.625 | {seal.mean_difference:+.3f} | [{seal.ci_low:+.3f}, {seal.ci_high:+.3f}] | 4/0/0 | "
            f"0.125 | 4 |") in text
    assert "| none | -6.125 | -0.875 |" in text and "0/4/0" in text and "| passage | -5.250 | (reference) |" in text
    assert "| 3 | C (`c`) | -7.000 | -6.000 | -5.500 |" in text  # the per-passage table
    assert "| none | 20.0 | -20.0 |" in text and "| seal | 40.0 | +0.0 |" in text  # QA table, points vs passage
    report = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert report["reference"] == "passage" and set(report["paired"]) == {"none", "seal"}
    assert report["paired"]["seal"] == pytest.approx(seal.to_dict())
    assert report["qa_paired"]["contained"]["none"]["mean_difference"] == pytest.approx(-0.2)
    assert report["per_passage"][2] == {"passage": "C (`c`)", "scores": {"none": -7.0, "passage": -6.0, "seal": -5.5}}
    assert report["contexts"] == ["a", "b", "c", "d"]
    assert paths["chart"].stat().st_size > 1000


def test_paired_report_with_one_passage_and_an_unknown_reference(tmp_path):
    one = {name: values[:1] for name, values in SCORES.items()}
    table = paired_table(one, "passage", metric="loglik")
    assert "| seal | -4.000 | +1.000 | n/a (n < 2) | 1/0/0 | 1 | 1 |" in table
    paths = write_report(tmp_path, title="t", scores=one, metric="loglik", reference="passage", details={})
    report = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert report["paired"]["seal"]["ci_low"] is None and math.isclose(report["paired"]["seal"]["mean_difference"], 1)
    with pytest.raises(ValueError, match="reference method 'teacher' was not evaluated"):
        paired_table(SCORES, "teacher", metric="loglik")


def test_without_a_reference_the_report_is_unpaired(tmp_path):
    paths = write_report(tmp_path, title="t", scores=SCORES, metric="success", details={})
    assert "| none | -6.125 | ± " in paths["markdown"].read_text() and "paired" not in json.loads(
        paths["json"].read_text())
