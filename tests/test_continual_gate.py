"""The promotion gate as a pure function of scores, and the regression-suite measurements."""

from __future__ import annotations

import pytest

from seal_trl.continual.gate import CandidateOutputs, GateThresholds, banned_phrases, evaluate_gate, run_constraints


def scores(new, earlier, ppl=10.0, qa=60.0):
    doc = lambda acc: {"accuracy": acc, "soft_accuracy": acc, "loglik": -acc / 100}  # noqa: E731
    return {"new": {"n": doc(new)}, "earlier": {k: doc(v) for k, v in earlier.items()},
            "regression": {"perplexity": ppl, "qa_accuracy": qa, "qa_soft_accuracy": qa}}


def test_a_candidate_that_passes_every_objective_is_promotable():
    verdict = evaluate_gate(scores(20, {"a": 60, "b": 40}), scores(60, {"a": 59, "b": 40}, ppl=10.1, qa=59.5))
    assert verdict.passed and verdict.reasons == []
    names = [o.name for o in verdict.objectives]
    assert names == ["new_document", "earlier_documents", "regression_perplexity", "regression_qa"]
    assert verdict.objectives[0].value == 40 and verdict.objectives[1].value == pytest.approx(0.5)


@pytest.mark.parametrize("after, failing", [
    (scores(20, {"a": 60, "b": 40}), "new_document"),            # learned nothing
    (scores(60, {"a": 40, "b": 40}), "earlier_documents"),       # mean drop 10 points
    (scores(60, {"a": 60, "b": 40}, ppl=10.3), "regression_perplexity"),  # +3%
    (scores(60, {"a": 60, "b": 40}, qa=58.0), "regression_qa"),  # -3.3%
])
def test_each_objective_can_refuse_with_a_reason(after, failing):
    verdict = evaluate_gate(scores(20, {"a": 60, "b": 40}), after)
    assert not verdict.passed
    assert [o.name for o in verdict.objectives if not o.passed] == [failing]
    assert verdict.reasons[0].startswith(failing + ":")
    data = verdict.to_json()
    assert data["passed"] is False and len(data["objectives"]) == 4 and data["reasons"] == verdict.reasons


def test_thresholds_are_configurable_and_validated():
    before, after = scores(20, {"a": 60, "b": 40}), scores(60, {"a": 55, "b": 40})
    assert not evaluate_gate(before, after).passed  # mean drop 2.5 > 2
    assert evaluate_gate(before, after, GateThresholds(max_earlier_drop=3)).passed
    strict = GateThresholds(max_earlier_drop=3, max_single_earlier_drop=4)
    assert evaluate_gate(before, after, strict).reasons[0].startswith("earlier_document_worst: a dropped 5.00")
    with pytest.raises(ValueError, match="probe_metric"):
        GateThresholds(probe_metric="vibes")
    with pytest.raises(ValueError, match="max_qa_drop"):
        GateThresholds(max_qa_drop=-1)


def test_a_zero_threshold_allows_exactly_no_change():
    """Thresholds are inclusive limits: with every limit at 0, a candidate that changes nothing it should keep
    passes, and the smallest drop beyond it fails."""
    zero = GateThresholds(max_earlier_drop=0, max_single_earlier_drop=0, max_perplexity_increase=0, max_qa_drop=0)
    before = scores(20, {"a": 60, "b": 40})
    verdict = evaluate_gate(before, scores(60, {"a": 60, "b": 40}), zero)
    assert verdict.passed and len(verdict.objectives) == 5
    assert not evaluate_gate(before, scores(60, {"a": 59.99, "b": 40}), zero).passed
    assert not evaluate_gate(before, scores(60, {"a": 60, "b": 40}, ppl=10.001), zero).passed


def test_constraints_are_objectives_and_never_crash_the_gate():
    outputs = CandidateOutputs(samples={"Question: who?\nAnswer:": "The Acme Corp is the best"})

    def broken(_):
        raise RuntimeError("boom")

    for blank in ([""], ["ok", "  "], []):  # a blank phrase would ban nothing (or everything): refused
        with pytest.raises(ValueError, match="non-blank phrases"):
            banned_phrases(blank)
    results = run_constraints([banned_phrases(["acme corp"]), banned_phrases(["zebra"], name="zebra"), broken],
                              outputs)
    assert results["banned_phrases"].startswith("an answer contains banned phrase 'acme corp'")
    assert results["zebra"] is None and "RuntimeError: boom" in results["broken"]
    verdict = evaluate_gate(scores(20, {}), scores(60, {}), constraint_failures=results)
    assert not verdict.passed
    assert {o.name for o in verdict.objectives if not o.passed} == {"constraint:banned_phrases", "constraint:broken"}


def test_regression_scores_on_the_tiny_model(tiny_model, tiny_tokenizer):
    import torch

    from seal_trl.continual.regression import regression_scores

    first = regression_scores(tiny_model, tiny_tokenizer)
    assert first["perplexity"] > 1 and 0 <= first["qa_accuracy"] <= 100 and 0 < first["qa_soft_accuracy"] < 100
    assert regression_scores(tiny_model, tiny_tokenizer) == first  # deterministic
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert regression_scores(tiny_model, tiny_tokenizer)["perplexity"] != first["perplexity"]


def test_kl_to_promoted_is_an_objective_only_when_its_threshold_is_set():
    before, after = scores(20, {"a": 60}), {**scores(60, {"a": 60}), "kl_to_promoted": 0.3}
    assert "kl_to_promoted" not in {o.name for o in evaluate_gate(before, after).objectives}
    limited = evaluate_gate(before, after, GateThresholds(max_kl_to_promoted=0.7))
    assert limited.passed and limited.objectives[-1].name == "kl_to_promoted" and limited.objectives[-1].value == 0.3
    refused = evaluate_gate(before, after, GateThresholds(max_kl_to_promoted=0.25))
    assert refused.reasons == ["kl_to_promoted: KL(promoted || candidate) 0.3000 nats per token on the new "
                               "document's texts (limit 0.25)"]
    assert evaluate_gate(before, {**after, "kl_to_promoted": 0.0}, GateThresholds(max_kl_to_promoted=0)).passed
    assert not evaluate_gate(before, {**after, "kl_to_promoted": float("nan")},
                             GateThresholds(max_kl_to_promoted=0.7)).passed
    with pytest.raises(ValueError, match="no number `kl_to_promoted`"):
        evaluate_gate(before, scores(60, {"a": 60}), GateThresholds(max_kl_to_promoted=0.7))
    for bad in (-0.1, float("nan"), "0.7", True):
        with pytest.raises(ValueError, match="GateThresholds.max_kl_to_promoted"):
            GateThresholds(max_kl_to_promoted=bad)


class Verdict:
    def __init__(self, passed):
        self.passed, self.reasons = passed, [] if passed else ["too far"]


@pytest.mark.parametrize("limit, floor, steps, found, scales", [
    (0.6, 0.125, 4, 0.5625, [0.125, 0.5625, 0.78125, 0.671875, 0.6171875]),
    (0.99, 0.5, 2, 0.875, [0.5, 0.75, 0.875]),
    (0.1, 0.125, 4, None, [0.125]),     # the floor fails: nothing more is tried
    (0.9, 1.0, 4, None, []),            # floor 1 is the refused update itself
])
def test_search_scale_bisects_between_the_floor_and_one(limit, floor, steps, found, scales):
    from seal_trl.continual.rescale import search_scale

    calls = []

    def evaluate(s):
        calls.append(s)
        return Verdict(s <= limit), f"payload {s}"

    scale, chosen, tried = search_scale(evaluate, floor=floor, steps=steps)
    assert scale == found and calls == scales == [t["scale"] for t in tried]
    assert chosen == (None if found is None else (chosen[0], f"payload {found}"))
    assert [t["passed"] for t in tried] == [s <= limit for s in scales]
    assert all(t["reasons"] == ([] if t["passed"] else ["too far"]) for t in tried)


def test_scale_update_multiplies_lora_b_only():
    import torch

    from seal_trl.continual.rescale import scale_update

    state = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.full((3, 2), 2.0)}
    scaled = scale_update(state, 0.25)
    assert torch.equal(scaled["m.lora_A.weight"], state["m.lora_A.weight"])
    assert torch.equal(scaled["m.lora_B.weight"], torch.full((3, 2), 0.5))
    assert torch.equal(state["m.lora_B.weight"], torch.full((3, 2), 2.0))  # the trained state is left alone
    assert torch.allclose(scaled["m.lora_B.weight"] @ scaled["m.lora_A.weight"],
                          0.25 * state["m.lora_B.weight"] @ state["m.lora_A.weight"])
    with pytest.raises(ValueError, match="lora_B"):
        scale_update({"m.weight": torch.ones(1)}, 0.5)


def test_a_total_budget_refuses_what_per_step_limits_let_compound():
    """Each step +1.9% passes the per-step 2% limit; against the base model the same candidate is +21% and the total
    budget refuses it, naming the base model; QA the same way; without a budget there is no total objective."""
    base = {"perplexity": 10.0, "qa_accuracy": 60.0, "qa_soft_accuracy": 60.0}
    before = {**scores(20, {"a": 60}, ppl=11.9, qa=54.0), "base_regression": base}
    after = scores(60, {"a": 60}, ppl=11.9 * 1.019, qa=54.0 * 0.985)
    assert evaluate_gate(before, after).passed
    budget = GateThresholds(max_total_perplexity_increase=0.05, max_total_qa_drop=0.05)
    verdict = evaluate_gate(before, after, budget)
    assert [o.name for o in verdict.objectives if not o.passed] == ["total_perplexity", "total_qa"]
    ppl = next(o for o in verdict.objectives if o.name == "total_perplexity")
    assert ppl.value == pytest.approx(11.9 * 1.019 / 10.0 - 1) and "since the base model" in ppl.detail
    assert "10.000 ->" in ppl.detail and "limit +5%" in ppl.detail
    qa = next(o for o in verdict.objectives if o.name == "total_qa")
    assert qa.value == pytest.approx(1 - 54.0 * 0.985 / 60.0)
    # a budget on perplexity alone gates perplexity alone
    only = evaluate_gate(before, after, GateThresholds(max_total_perplexity_increase=0.5))
    assert only.passed and [o.name for o in only.objectives if o.name.startswith("total_")] == ["total_perplexity"]
    with pytest.raises(ValueError, match="base_regression"):
        evaluate_gate(scores(20, {"a": 60}), after, budget)
    with pytest.raises(ValueError, match="candidate's `regression`"):  # no regression measured: not silently passed
        evaluate_gate(before, {**after, "regression": None}, budget)
    with pytest.raises(ValueError, match="max_total_qa_drop"):
        GateThresholds(max_total_qa_drop=-0.1)
    with pytest.raises(ValueError, match="max_total_perplexity_increase"):
        GateThresholds(max_total_perplexity_increase=float("nan"))


def test_a_diverged_model_scores_an_infinite_perplexity_and_is_refused(tiny_model, tiny_tokenizer):
    """exp() of a mean NLL over ~709 overflows: a diverged candidate raised OverflowError (a traceback) instead of
    being refused."""
    import math

    import torch

    from seal_trl.continual.regression import RegressionSuite, perplexity, regression_scores

    text = RegressionSuite.bundled().heldout_text[:400]
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight.mul_(1e5)
    assert perplexity(tiny_model, tiny_tokenizer, text) == math.inf
    after = regression_scores(tiny_model, tiny_tokenizer)
    before = {**scores(20, {}), "regression": {**after, "perplexity": 20.0}}
    verdict = evaluate_gate(before, {**scores(60, {}), "regression": after})
    assert not verdict.passed and any(r.startswith("regression_perplexity") for r in verdict.reasons)
