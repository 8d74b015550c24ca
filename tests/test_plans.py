import pytest

from seal_trl.plans import (
    FAILURE_REASONS,
    PlanBounds,
    SelfEditError,
    TrainingPlan,
    decode_self_edit,
    self_edit_lines,
)


def test_num_steps_counts_batches_and_epochs_and_caps():
    plan = TrainingPlan.from_texts(["a", "b", "c"], batch_size=2, epochs=4)
    assert plan.num_steps == 8
    assert plan.with_hyperparameters(max_steps=5).num_steps == 5


def test_pairs_default_to_completion_loss():
    plan = TrainingPlan.from_pairs([("Q?", "A")])
    assert plan.loss_on == "completion" and plan.examples[0].is_pair


@pytest.mark.parametrize(
    "changes, reason, field",
    [
        ({"learning_rate": 1.0}, "out_of_bounds", "learning_rate"),
        ({"learning_rate": float("nan")}, "out_of_bounds", "learning_rate"),
        ({"learning_rate": 0.0}, "out_of_bounds", "learning_rate"),
        ({"epochs": -1}, "out_of_bounds", "epochs"),
        ({"epochs": 10_000}, "out_of_bounds", "epochs"),
        ({"epochs": 2.5}, "out_of_bounds", "epochs"),
        ({"batch_size": 0}, "out_of_bounds", "batch_size"),
        ({"loss_on": "prompt"}, "out_of_bounds", "loss_on"),
    ],
)
def test_bounds_reject_bad_hyperparameters_naming_the_field(changes, reason, field):
    plan = TrainingPlan.from_texts(["some text"]).with_hyperparameters(**changes)
    with pytest.raises(SelfEditError) as err:
        PlanBounds().check(plan)
    assert err.value.reason == reason and err.value.field == field
    assert field in str(err.value)


def test_step_budget_and_example_count():
    bounds = PlanBounds(step_budget=30, max_examples=4)
    with pytest.raises(SelfEditError) as err:
        bounds.check(TrainingPlan.from_texts(["x"] * 4, epochs=10))
    assert err.value.reason == "over_budget"
    with pytest.raises(SelfEditError) as err:
        bounds.check(TrainingPlan.from_texts(["x"] * 5, epochs=1))
    assert err.value.reason == "too_many_examples"
    assert bounds.check(TrainingPlan.from_texts(["x"] * 3, epochs=10)).num_steps == 30


def test_empty_plans_and_blank_examples():
    with pytest.raises(SelfEditError) as err:
        PlanBounds().check(TrainingPlan(examples=()))
    assert err.value.reason == "empty"
    with pytest.raises(SelfEditError) as err:
        PlanBounds().check(TrainingPlan.from_texts(["ok", "   "]))
    assert err.value.field == "examples[1]"


def test_token_limits():
    bounds = PlanBounds(max_example_tokens=10, max_total_tokens=15)
    bounds.check_token_counts([10, 5])
    with pytest.raises(SelfEditError, match=r"examples\[1\]"):
        bounds.check_token_counts([3, 11])
    with pytest.raises(SelfEditError) as err:
        bounds.check_token_counts([8, 8])
    assert err.value.reason == "too_long"


def test_self_edit_lines_strip_markers_and_preambles():
    text = "Sure! Here are the implications:\n1. The river is long.\n- It floods in May.\n\n  * Fish live there.\n(4) Boats sail.\n"
    assert self_edit_lines(text) == ["The river is long.", "It floods in May.", "Fish live there.", "Boats sail."]


def test_self_edit_lines_keeps_numbers_inside_sentences():
    assert self_edit_lines("1874 was the year.\n3.5 tons of ore") == ["1874 was the year.", "3.5 tons of ore"]


@pytest.mark.parametrize("raw, reason", [("", "empty"), ("\n \n", "empty"), (b"\xff\xfe bad", "not_utf8"),
                                         (123, "unparseable"), ("x" * 200_001, "too_long")])
def test_bad_self_edits(raw, reason):
    with pytest.raises(SelfEditError) as err:
        self_edit_lines(raw)
    assert err.value.reason == reason


def test_utf8_bytes_accepted():
    assert decode_self_edit("café".encode()) == "café"


def test_unknown_reason_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown SelfEditError reason"):
        SelfEditError("nope", "x")
    for reason in FAILURE_REASONS:  # every documented reason is accepted
        assert SelfEditError(reason, "x").reason == reason
