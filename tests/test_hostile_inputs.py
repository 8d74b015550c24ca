"""Hostile self-edits (issue 15): every bad input ends as reward 0 with a reason from `plans.FAILURE_REASONS`,
nothing hangs, nothing escapes the reward, and the engine scores a normal self-edit bit-identically afterwards.

Self-edits are sampled model text, so the corpus is what a model (or a broken generation) can emit: giant and
whitespace-heavy text, control and invisible characters, bytes, deep JSON, numbers Python cannot convert.
"""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.plans import (FAILURE_REASONS, MAX_SELF_EDIT_CHARS, PlanBounds, SelfEditError, TrainingPlan,
                            self_edit_lines)
from seal_trl.reward import SelfEditReward
from seal_trl.tasks.arc.config import DEFAULT_CONFIG, MAX_CHARS as ARC_MAX_CHARS
from seal_trl.tasks.arc.task import ArcTask, arc_inner_config
from seal_trl.tasks.knowledge import KnowledgeTask, qa_pairs

# Hang guards, not speed checks: one bad input is parsed in well under a second, a tiny training run in seconds.
HANG_LIMIT_S = 20
TRAIN_LIMIT_S = 300

CONTEXT = {"context_id": "velmora", "title": "Velmora",
           "context": "The river Velmora runs through the valley of Ostrand and feeds three lakes.",
           "questions": [{"question": "Which valley does the Velmora cross?", "answers": ["Ostrand"]},
                         {"question": "How many lakes does it feed?", "answers": ["three"]}]}
PUZZLE = {"context_id": "toy", "train": [{"input": [[1, 0]], "output": [[0, 1]]},
                                         {"input": [[2, 3]], "output": [[3, 2]]},
                                         {"input": [[4, 0], [0, 5]], "output": [[0, 4], [5, 0]]}],
          "test": [{"input": [[6, 7]], "output": [[7, 6]]}]}
NORMAL = {"implications": "The river Velmora runs through Ostrand.\nThe Velmora feeds three lakes.",
          "self_qa": "Question: Which valley does the Velmora cross?\nAnswer: Ostrand"}

JUNK_CHARACTERS = {
    "nul bytes": "\x00" * 2000,
    "control characters": "".join(chr(c) for c in range(32) if chr(c) not in "\t\n") * 20 + "\x7f\x85\x9b",
    "ansi escapes": "\x1b[31m\x1b[1;4m\x1b[0m\n\x1b]0;window title\x07\x1b[2J\x1b[H\x1bM\n\x1b[38;5;196m",
    "zero-width spaces": "\u200b\u200c\u200d\u2060\ufeff" * 200,
    "bidi and soft hyphens": "\u202e\u202d\u2066\u2067\u2069\u00ad\u061c" * 50,
    "hangul fillers": "\u3164\u115f\u1160\uffa0" * 50,
    "combining marks only": "\u0301\u0308\u20dd" * 300,
    "exotic spaces": "\xa0\u2003\u3000\u2028\u2029\u205f\t\r\x0b\x0c" * 50,
    "private use and braille blank": "\ue000\uf8ff\u2800" * 50,
    "emoji only": "\U0001f642\U0001f389\u2764\ufe0f\n\U0001f468\u200d\U0001f469\u200d\U0001f467" * 20,
    "punctuation only": "!!! ... ---\n***\n?!?!\n()[]{}<>\n" * 20,
    "brackets only": "[" * 50_000,
    "list markers only": "1.\n2)\n- \n* \n\u2022\n(3)\na)\n",
    "preamble only": "Sure! Here are the implications:\nOkay, here is my answer.",
    "empty": "",
    "whitespace only": " \n\t \r\n   \n" * 100,
}

# (name, style, self-edit, expected reason); each goes through SelfEditReward as TRL would call it.
KNOWLEDGE_CORPUS = [
    *[(name, style, text, "empty") for name, text in JUNK_CHARACTERS.items() for style in NORMAL],
    ("self_qa run of 4,000 spaces", "self_qa", "Q: x" + " " * 4000 + "y", "unparseable"),
    ("self_qa spaces up to the cap", "self_qa", "Q: x" + " " * (MAX_SELF_EDIT_CHARS - 5) + "y", "unparseable"),
    ("self_qa spaces between markers", "self_qa", "Q:" + " \n" * 40_000 + "A:" + " \t" * 9_000, "unparseable"),
    ("self_qa answer markers in runs", "self_qa", "Q: x " + ("a" + " " * 60) * 1500, "unparseable"),
    ("self_qa questions only", "self_qa", "Q:\n" * 30_000, "unparseable"),
    ("self_qa junk pairs", "self_qa", "Q: ???\nA: !!!\nQ: \x00\u200b\nA: \x1b[0m", "unparseable"),
    ("over the cap", "implications", "x" * (MAX_SELF_EDIT_CHARS + 1), "too_long"),
    ("over the cap", "self_qa", "Q: x A: " + "y" * MAX_SELF_EDIT_CHARS, "too_long"),
    ("10 MB", "implications", "The river floods. " * 600_000, "too_long"),
    ("10 MB", "self_qa", "Q: Which? A: Ostrand\n" * 500_000, "too_long"),
    ("one giant line", "implications", "word " * 19_000, "too_long"),
    ("one giant token run", "implications", "a" * (MAX_SELF_EDIT_CHARS - 1), "too_long"),
    ("many lines", "implications", "fact\n" * 19_000, "too_many_examples"),
    ("many pairs", "self_qa", "Q: a?\nA: b\n" * 9_000, "too_many_examples"),
    ("lone surrogate", "implications", "The river \ud800 floods in May.", "not_utf8"),
    ("lone surrogate", "self_qa", "Question: Which?\nAnswer: Ostr\udfffand", "not_utf8"),
    ("bytes, not UTF-8", "implications", b"The river \xff\xfe floods.", "not_utf8"),
    ("bytes, not UTF-8", "self_qa", b"Question: Which?\nAnswer: \xc3\x28", "not_utf8"),
    ("bytes of NULs", "implications", b"\x00" * 64, "empty"),  # its repr, b'\x00...', has letters and digits
    ("message with bytes content", "implications", [{"role": "assistant", "content": b"\x80abc"}], "not_utf8"),
    ("message of control characters", "implications", [{"role": "assistant", "content": "\x07\x08\x1b"}], "empty"),
    ("none", "implications", None, "empty"),
]


class Hang(BaseException):
    """Raised by `hang_guard`; a BaseException so that no `except Exception` in the code under test hides it."""


@contextmanager
def hang_guard(seconds: float = HANG_LIMIT_S):
    """Fail (with `Hang`) anything still running after `seconds`. SIGALRM interrupts Python code and regular
    expressions, which check for signals while matching."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def columns_for(task, context, n):
    return {f: [context[f]] * n for f in task.context_fields}


def score(reward, context, completions, limit=HANG_LIMIT_S):
    """TRL's call: rewards and the logged failure reasons ('' for a run that trained)."""
    logged = {}
    with hang_guard(limit):
        values = reward([""] * len(completions), list(completions), log_extra=logged.__setitem__,
                        **columns_for(reward.task, context, len(completions)))
    return values, logged["inner_error"]


@pytest.fixture(scope="module")
def loop(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    return InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                     InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2))


@pytest.fixture(scope="module")
def rewards(loop):
    return {style: SelfEditReward(KnowledgeTask(style=style), loop) for style in NORMAL}


@pytest.fixture(scope="module")
def arc_reward(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    task = ArcTask(tokenizer=tiny_tokenizer, bounds=PlanBounds(max_examples=3, step_budget=100))
    config = arc_inner_config(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), grader="loglik",
                              reward="gain", bounds=task.bounds)
    return SelfEditReward(task, InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                                          config))


@pytest.mark.parametrize("name, style, completion, reason", KNOWLEDGE_CORPUS,
                         ids=[f"{style}: {name}" for name, style, _, _ in KNOWLEDGE_CORPUS])
def test_bad_knowledge_self_edits_score_zero_with_their_reason(rewards, name, style, completion, reason):
    assert reason in FAILURE_REASONS
    values, errors = score(rewards[style], CONTEXT, [completion])
    assert (values, errors) == ([0.0], [reason])


def test_task_plan_raises_only_self_edit_errors_for_the_corpus():
    for name, style, completion, reason in KNOWLEDGE_CORPUS:
        if not isinstance(completion, (str, bytes)):
            continue
        try:
            with hang_guard():
                KnowledgeTask(style=style).plan(CONTEXT, completion)
        except SelfEditError as err:
            assert err.reason in FAILURE_REASONS, name
            assert "\n" not in str(err), f"{name}: the error is one line"


@pytest.mark.parametrize("style", [*NORMAL, "arc"])
def test_the_character_cap_comes_before_any_parsing(tiny_tokenizer, monkeypatch, style):
    import seal_trl.plans as plans

    def parsed(text):
        raise AssertionError("the text was read past its cap")

    monkeypatch.setattr(plans, "strip_invisible", parsed)  # the first step of every parser after decoding
    task, context, cap = (ArcTask(tokenizer=tiny_tokenizer), PUZZLE, ARC_MAX_CHARS) if style == "arc" else \
        (KnowledgeTask(style=style), CONTEXT, MAX_SELF_EDIT_CHARS)
    for text in ["Q: x A: y " + " " * cap, b"\xff" * (4 * cap + 1)]:
        with pytest.raises(SelfEditError) as err:
            task.plan(context, text)
        assert err.value.reason == "too_long" and err.value.field == "self_edit"
        assert f"at most {cap} characters" in str(err.value)


def test_the_4000_space_self_qa_case_parses():
    with hang_guard():
        assert qa_pairs("Q: x" + " " * 4000 + "y") == []
        assert qa_pairs("Q: x" + " " * 4000 + "A: y") == [("x", "y")]


@pytest.mark.parametrize("text, pairs", [
    ("Question: Which valley?\nAnswer: Ostrand\n\nQ: What is Velmora?\nA: A river",
     [("Which valley?", "Ostrand"), ("What is Velmora?", "A river")]),
    ("Q1: Which valley? A1: Ostrand\nQ2. How many lakes? A2. three", [("Which valley?", "Ostrand"),
                                                                      ("How many lakes?", "three")]),
    ("Q:\nWhich valley?\n\nA:\nOstrand", [("Which valley?", "Ostrand")]),
    ("  question 3 :  Which valley?  \n  ANSWER 3:  Ostrand  ", [("Which valley?", "Ostrand")]),
    ("Q: Which valley?\nIt is Ostrand.\nQ: How many lakes?\nA: three", [("How many lakes?", "three")]),
    ("Q: Which data: the old map or the new one? A: the new one",
     [("Which data: the old map or the new one?", "the new one")]),
])
def test_self_qa_formats_parse(text, pairs):
    assert qa_pairs(text) == pairs


def test_valid_lines_survive_among_junk(rewards):
    junk = "\x00\x00\n1. The river Velmora runs through Ostrand.\n\u200b\u200b\n---\n\x1b[31m\x1b[0m\n" \
           "- The \x1b[1mVelmora\x1b[0m feeds three\u200b lakes.\r\n\U0001f642\n"
    task = KnowledgeTask()
    assert task.plan(CONTEXT, junk).examples == task.plan(CONTEXT, NORMAL["implications"]).examples
    values, errors = score(rewards["implications"], CONTEXT, [junk], TRAIN_LIMIT_S)
    assert errors == [""] and values[0] != 0.0
    qa = "\x07Question: Which valley does the Velmora cross?\u200b\nAnswer: \x1b[32mOstrand\x1b[0m\nQ: ?\nA: !"
    assert KnowledgeTask(style="self_qa").plan(CONTEXT, qa).examples == \
        KnowledgeTask(style="self_qa").plan(CONTEXT, NORMAL["self_qa"]).examples


def test_every_line_break_splits_lines_and_invisible_characters_go():
    text = "1. The river floods.\u2028It rains.\x0cFish swim.\rBoats sail.\x85Ice\u200b forms.\u2029Sure! Here it is:"
    assert self_edit_lines(text) == ["The river floods.", "It rains.", "Fish swim.", "Boats sail.", "Ice forms."]


def test_utf8_bytes_train_exactly_like_their_text(rewards):
    text = NORMAL["implications"]
    (as_bytes, as_text), errors = score(rewards["implications"], CONTEXT, [text.encode(), text], TRAIN_LIMIT_S)
    assert errors == ["", ""] and as_bytes == as_text != 0.0


def test_bytes_through_score_one_score_like_their_text(rewards):
    text = NORMAL["implications"]
    with hang_guard(TRAIN_LIMIT_S):
        as_bytes = rewards["implications"].score_one(CONTEXT, text.encode())
        as_text = rewards["implications"].score_one(CONTEXT, text)
        broken = rewards["implications"].score_one(CONTEXT, b"\xff\xfe" + text.encode())
    assert as_bytes[0] == as_text[0] != 0.0 and as_bytes[2] is None
    assert broken[0] == 0.0 and broken[2] == "not_utf8"


def test_a_normal_self_edit_scores_bit_identically_before_and_after_the_corpus(rewards):
    def normal_runs():
        out = {}
        for style, reward in rewards.items():
            values, errors = score(reward, CONTEXT, [NORMAL[style]], TRAIN_LIMIT_S)
            assert errors == [""]
            run = reward.last_results[0][0]
            out[style] = (values[0], run.score_before, run.score_after, tuple(run.losses))
        return out

    before = normal_runs()
    for style, reward in rewards.items():
        corpus = [c for _, s, c, _ in KNOWLEDGE_CORPUS if s == style]
        values, errors = score(reward, CONTEXT, corpus, TRAIN_LIMIT_S)
        assert values == [0.0] * len(corpus) and all(errors)
    assert normal_runs() == before


def test_a_giant_plan_is_refused_before_it_is_tokenized(loop, monkeypatch):
    import seal_trl.inner.engine as engine

    encoded = []
    monkeypatch.setattr(engine, "encode_example", lambda *a, **k: encoded.append(1))
    probe = KnowledgeTask().probe(CONTEXT)
    with hang_guard():
        result = loop.run(TrainingPlan.from_texts(["The river floods. " * 600_000]), probe)
    assert result.error == "too_long" and "characters" in result.error_message and encoded == []


@pytest.mark.parametrize("counts, field", [([1024 * 128 + 1], "examples[0]"), ([100_000] * 30, "examples")])
def test_character_bound_names_the_example_or_the_plan(counts, field):
    plan = TrainingPlan.from_texts(["x" * n for n in counts], epochs=1)
    with pytest.raises(SelfEditError) as err:
        PlanBounds().check(plan)
    assert err.value.reason == "too_long" and err.value.field == field
    PlanBounds().check(TrainingPlan.from_texts(["x" * 1024 * 128], epochs=1))  # at the bound: left to the tokens


def arc_config_text(**training) -> str:
    """The default ARC configuration with raw JSON text substituted for training values."""
    text = DEFAULT_CONFIG.to_json()
    for key, raw in training.items():
        value = json.dumps(DEFAULT_CONFIG.to_dict()["training"][key])
        text = text.replace(f'"{key}": {value}', f'"{key}": {raw}')
    return text


ARC_CORPUS = [
    ("1,000 nested lists", '{"data_generation": ' + "[" * 1000 + "]" * 1000 + "}", "too_deep"),
    ("3,000 nested objects", '{"a":' * 3000 + "}" * 3000, "too_deep"),
    ("nesting hidden by brackets in strings", "[" + '"]",[' * 2000, "too_deep"),
    ("bracket flood", "{" * 5000, "too_deep"),
    ("5,000-digit epochs", arc_config_text(num_train_epochs="9" * 5000), "out_of_bounds"),
    ("5,000-digit learning rate", arc_config_text(learning_rate="-" + "1" * 5000), "out_of_bounds"),
    ("33-digit epochs", arc_config_text(num_train_epochs="1" * 33), "out_of_bounds"),
    ("20-digit epochs", arc_config_text(num_train_epochs="9" * 20), "out_of_bounds"),
    ("epochs 1e999", arc_config_text(num_train_epochs="1e999"), "unparseable"),
    ("epochs 1e300", arc_config_text(num_train_epochs="1e300"), "out_of_bounds"),
    ("epochs NaN", arc_config_text(num_train_epochs="NaN"), "unparseable"),
    ("epochs -0", arc_config_text(num_train_epochs="-0"), "out_of_bounds"),
    ("epochs -0.0", arc_config_text(num_train_epochs="-0.0"), "out_of_bounds"),
    ("learning rate 1e999", arc_config_text(learning_rate="1e999"), "out_of_bounds"),
    ("learning rate -1e999", arc_config_text(learning_rate="-1e999"), "out_of_bounds"),
    ("learning rate NaN", arc_config_text(learning_rate="NaN"), "out_of_bounds"),
    ("learning rate Infinity", arc_config_text(learning_rate="Infinity"), "out_of_bounds"),
    ("learning rate -0", arc_config_text(learning_rate="-0"), "out_of_bounds"),
    ("learning rate 1e-999", arc_config_text(learning_rate="1e-999"), "out_of_bounds"),
    ("over the cap", DEFAULT_CONFIG.to_json() + " " * ARC_MAX_CHARS, "too_long"),
    ("10 MB", "{" * 10_000_000, "too_long"),
    ("nul bytes", "\x00" * 500, "empty"),
    ("ansi and zero-width only", "\x1b[31m\u200b\x1b[0m\ufeff" * 50, "empty"),
    ("lone surrogate", DEFAULT_CONFIG.to_json() + "\udc80", "not_utf8"),
    ("bytes, not UTF-8", b"\xff" + DEFAULT_CONFIG.to_json().encode(), "not_utf8"),
    ("a list, not an object", "[1e999, NaN, -0]", "unparseable"),
]


@pytest.mark.parametrize("name, completion, reason", ARC_CORPUS, ids=[name for name, _, _ in ARC_CORPUS])
def test_bad_arc_self_edits_score_zero_with_their_reason(arc_reward, name, completion, reason):
    with hang_guard(), pytest.raises(SelfEditError) as err:
        arc_reward.task.plan(PUZZLE, completion)
    assert err.value.reason == reason and "\n" not in str(err.value)
    values, errors = score(arc_reward, PUZZLE, [completion])
    assert (values, errors) == ([0.0], [reason])


def test_a_normal_arc_self_edit_scores_bit_identically_before_and_after_the_corpus(arc_reward):
    def normal_run():
        values, errors = score(arc_reward, PUZZLE, [DEFAULT_CONFIG.to_json()], TRAIN_LIMIT_S)
        assert errors == [""]
        return values, tuple(arc_reward.last_results[0][0].losses)

    before = normal_run()
    values, errors = score(arc_reward, PUZZLE, [c for _, c, _ in ARC_CORPUS], TRAIN_LIMIT_S)
    assert values == [0.0] * len(ARC_CORPUS) and all(errors)
    assert normal_run() == before


JSONISH = st.lists(st.sampled_from(['{', '}', '[', ']', '"', ':', ',', '\\', ' ', '\n', '1e999', 'NaN', '-0',
                                    '9' * 40, '"training"', '"data_generation"', 'true', 'Q:', 'A:', '\x00',
                                    '\u200b', '\x1b[', '\ud800']), max_size=60).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=300), JSONISH))
def test_any_text_is_a_plan_or_a_self_edit_error(tiny_tokenizer, text):
    tasks = [KnowledgeTask(style="implications"), KnowledgeTask(style="self_qa"), ArcTask(tokenizer=tiny_tokenizer)]
    for task, context in zip(tasks, [CONTEXT, CONTEXT, PUZZLE]):
        try:
            with hang_guard():
                plan = task.plan(context, text)
        except SelfEditError as err:
            assert err.reason in FAILURE_REASONS
        else:
            assert plan.examples
    try:
        lines = self_edit_lines(text)
    except SelfEditError:
        return
    assert all(any(ch.isalnum() for ch in line) for line in lines)


def test_a_diverged_run_leaves_nothing_behind(tiny_model_dir, tiny_tokenizer):
    """A self-edit whose training goes to NaN fails alone; the next context's unadapted score is not NaN."""
    from transformers import AutoModelForCausalLM

    def fresh_loop():
        config = InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=3,
                                 lr_schedule="constant", max_grad_norm=None,
                                 bounds=PlanBounds(max_learning_rate=1e38))
        return InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer, config)

    other = {**CONTEXT, "context_id": "other", "title": "Other"}
    loop = fresh_loop()
    diverging = SelfEditReward(KnowledgeTask(), loop, hyperparameters={"learning_rate": 1e38})
    assert score(diverging, CONTEXT, [NORMAL["implications"]], TRAIN_LIMIT_S) == ([0.0], ["nan_loss"])
    values, errors = score(SelfEditReward(KnowledgeTask(), loop), other, [NORMAL["implications"]], TRAIN_LIMIT_S)
    expected, _ = score(SelfEditReward(KnowledgeTask(), fresh_loop()), other, [NORMAL["implications"]],
                        TRAIN_LIMIT_S)
    assert errors == [""] and values == expected
