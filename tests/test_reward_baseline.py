"""SelfEditReward against a baseline: the passage-only fine-tune, or the passage repeated to the self-edit's tokens."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.config import SEALConfig
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.plans import PlanBounds
from seal_trl.reward import SelfEditReward
from seal_trl.tasks.arc.task import ArcTask
from seal_trl.tasks.knowledge import KnowledgeTask, matching_copies

CONTEXT = {"context_id": "velmora", "title": "Velmora", "context": "The river Velmora runs through the valley of "
           "Ostrand and feeds three lakes.", "questions": [{"question": "Which valley does the Velmora cross?",
                                                            "answers": ["Ostrand"]}]}
SHORT = "The Velmora crosses Ostrand."
LONG = "\n".join(f"Fact {i}: the river Velmora runs through the valley of Ostrand and feeds three lakes."
                 for i in range(8))
BASELINE_TEXT = "\x00baseline: passage x{}"


def columns(n):
    return {k: [CONTEXT[k]] * n for k in ("context_id", "title", "context", "questions")}


@pytest.fixture()
def inner(tiny_model_dir, tiny_tokenizer):
    loop = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                     InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2,
                                     learning_rate=5e-3))
    jobs = []
    original = loop.run_many
    loop.run_many = lambda batch, **kw: jobs.extend(batch) or original(batch, **kw)
    loop.jobs_seen = jobs
    return loop


def independent_passage_score(loop, reward, copies):
    """The passage-only fine-tune run by hand, with the seed the reward gives its baseline run."""
    task = KnowledgeTask()
    seed = reward._seed("velmora", BASELINE_TEXT.format(copies), 0)
    plan = task.passage_plan(CONTEXT, copies, **reward.default_hyperparameters())
    return loop.run(plan, task.probe(CONTEXT), context_id="velmora", seed=seed).score_after


def test_matching_copies():
    assert matching_copies(1000, 300) == 3.33  # to a hundredth of a copy, not rounded to whole passages
    assert matching_copies(510, 300) == 1.7
    assert matching_copies(100, 300) == 1  # at least one copy
    assert matching_copies(0, 0) == 1


def test_a_fractional_copy_is_a_shortened_passage_cut_at_a_word(tiny_tokenizer):
    task = KnowledgeTask()
    full = f"{CONTEXT['title']}\n{CONTEXT['context']}"
    assert [e.completion for e in task.passage_plan(CONTEXT, 2).examples] == [full, full]
    plan = task.passage_plan(CONTEXT, 2.5)
    assert [e.completion for e in plan.examples[:2]] == [full, full]
    part = plan.examples[2].completion
    assert full.startswith(part) and full[len(part)] == " " and abs(len(part) - len(full) / 2) <= 8
    tokens = [len(tiny_tokenizer(e.completion)["input_ids"]) for e in task.passage_plan(CONTEXT, 1.5).examples]
    assert abs(tokens[1] - tokens[0] / 2) <= 3  # about half a passage's tokens
    for bad in (0.5, True, "2", float("nan"), float("inf")):
        with pytest.raises(ValueError, match="copies must be a number >= 1"):
            task.passage_plan(CONTEXT, bad)


def test_passage_baseline_reward_is_the_gain_over_the_passage_fine_tune(inner):
    plain = SelfEditReward(KnowledgeTask(), inner, progress=False)
    against = SelfEditReward(KnowledgeTask(), inner, baseline="passage", progress=False)
    gains = plain([""] * 2, [SHORT, LONG], **columns(2))
    logged = {}
    rewards = against([""] * 2, [SHORT, LONG], log_extra=logged.__setitem__, **columns(2))
    reference = independent_passage_score(inner, against, 1)
    before = plain.last_results[0][0].score_before
    assert against.last_references == [pytest.approx(reference, abs=1e-5)] * 2
    assert logged["score_baseline"] == [pytest.approx(reference, abs=1e-4)] * 2
    for gain, reward in zip(gains, rewards):
        assert reward == pytest.approx(gain + before - reference, abs=1e-5)  # after - passage, not after - before
    assert reference != pytest.approx(before, abs=1e-3)  # the baseline really fine-tuned


def test_baseline_runs_once_per_context_and_policy_version(inner, tiny_model_dir):
    reward = SelfEditReward(KnowledgeTask(), inner, baseline="passage", progress=False)
    reward([""] * 2, [SHORT, LONG], **columns(2))
    first = len(inner.jobs_seen)
    assert first == 3  # two self-edits and one passage run for the one context
    reward([""], [SHORT + " Again."], **columns(1))
    assert len(inner.jobs_seen) == first + 1  # the passage run is reused
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inner.sync_from(policy, step=0)  # the trainer's first sync (step 0): a version of its own, not "as built"
    reward([""], [SHORT + " Once more."], **columns(1))
    assert len(inner.jobs_seen) == first + 3
    inner.sync_from(policy, step=0)  # synced again with no optimizer step between: the same policy version
    reward([""], [SHORT + " Twice more."], **columns(1))
    assert len(inner.jobs_seen) == first + 4  # the passage run is reused
    with torch.no_grad():
        next(policy.parameters()).add_(0.01)
    inner.sync_from(policy, step=1)  # a new policy: its passage run is its own
    reward([""], [SHORT + " And again."], **columns(1))
    assert len(inner.jobs_seen) == first + 6
    passage = f"{CONTEXT['title']}\n{CONTEXT['context']}"
    assert [job.plan.examples[0].completion == passage for job in inner.jobs_seen[-2:]].count(True) == 1


def test_passage_matched_baseline_interpolates_whole_copies_to_the_self_edits_tokens(inner):
    reward = SelfEditReward(KnowledgeTask(), inner, baseline="passage-matched", progress=False)
    rewards = reward([""] * 2, [SHORT, LONG], **columns(2))
    once = inner.jobs_seen[2]
    assert len(once.plan.examples) == 1
    once_tokens = reward._baseline_runs[next(iter(reward._baseline_runs))].tokens_trained
    expected = [matching_copies(runs[0].tokens_trained, once_tokens) for runs in reward.last_results]
    assert 1 < expected[0] < expected[1] and all(k != int(k) for k in expected)  # fractions of a passage
    around = {k for exact in expected for k in (math.floor(exact), math.ceil(exact)) if k > 1}
    baseline_jobs = inner.jobs_seen[3:]
    assert sorted(len(job.plan.examples) for job in baseline_jobs) == sorted(around)  # whole copies, each run once
    assert all(len({e.completion for e in job.plan.examples}) == 1 for job in baseline_jobs)
    for k, runs, reference, value in zip(expected, reward.last_results, reward.last_references, rewards):
        low, high = (independent_passage_score(inner, reward, c) for c in (math.floor(k), math.ceil(k)))
        assert reference == pytest.approx(low + (k - math.floor(k)) * (high - low), abs=1e-5)
        assert value == pytest.approx(runs[0].score_after - reference, abs=1e-5)


def test_failed_self_edit_scores_the_unadapted_model_against_the_baseline(inner):
    reward = SelfEditReward(KnowledgeTask(), inner, baseline="passage", progress=False)
    logged = {}
    rewards = reward([""], [""], log_extra=logged.__setitem__, **columns(1))
    run = reward.last_results[0][0]
    assert logged["inner_error"] == ["empty"]
    assert rewards[0] == pytest.approx(run.score_before - reward.last_references[0], abs=1e-6)
    assert rewards[0] < 0  # below the passage fine-tune, where a working self-edit can still win


def test_a_self_edit_the_matched_passage_cannot_match_fails_alone(inner):
    """Two long lines are 3 examples, but matching their tokens takes more copies than max_examples allows."""
    wordy = " ".join(["the river Velmora runs through the valley of Ostrand and feeds three lakes"] * 6)
    inner.config = InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2,
                                   learning_rate=5e-3, bounds=PlanBounds(max_examples=4))
    reward = SelfEditReward(KnowledgeTask(), inner, baseline="passage-matched", progress=False)
    logged = {}
    rewards = reward([""] * 2, [SHORT, f"{wordy}\n{wordy}"], log_extra=logged.__setitem__, **columns(2))
    assert logged["inner_error"] == ["", "too_long"]
    failed = reward.last_results[1][0]
    assert not failed.ok and failed.score_after is None and "copies of the passage" in failed.error_message
    passage = f"{CONTEXT['title']}\n{CONTEXT['context']}"
    copies = {len(job.plan.examples) for job in inner.jobs_seen if {e.completion for e in job.plan.examples} == {passage}}
    most = max(k for k in copies if k <= 4)  # the largest repeat that ran; the ones the long self-edit needs did not
    assert 1 < most < max(copies)
    assert reward.last_references[1] == pytest.approx(independent_passage_score(inner, reward, most), abs=1e-5)
    assert rewards[1] == pytest.approx(failed.score_before - reward.last_references[1], abs=1e-6)
    assert reward.last_results[0][0].ok


def test_baseline_needs_a_passage_and_a_comparable_reward(inner, tmp_path):
    with pytest.raises(ValueError, match="baseline must be one of"):
        SelfEditReward(KnowledgeTask(), inner, baseline="teacher")
    with pytest.raises(ValueError, match="arc task has none"):
        SelfEditReward(ArcTask(), inner, baseline="passage")
    with pytest.raises(ValueError, match="reward_baseline"):
        SEALConfig(output_dir=str(tmp_path), reward_baseline="passages")
    inner.config = InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), reward="success")
    with pytest.raises(ValueError, match="success"):
        SelfEditReward(KnowledgeTask(), inner, baseline="passage", progress=False)([""], [SHORT], **columns(1))
