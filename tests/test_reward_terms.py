"""The multi-objective reward: gain less forgetting and constraint violations, measured on the adapted model of the
same inner run (seal_trl/reward_terms.py), in the sequential and the K-slot engines."""

import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.config import SEALConfig
from seal_trl.continual.regression import RegressionSuite, perplexity, qa_scores
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner.graders import greedy_answers
from seal_trl.inner.tensors import encode_text
from seal_trl.reward import SelfEditReward
from seal_trl.reward_terms import RewardTerms
from seal_trl.seeding import context_key
from seal_trl.tasks.knowledge import KnowledgeTask
from seal_trl.trainer import reward_terms

CONTEXT = {"context_id": "velmora", "title": "Velmora", "context": "The river Velmora runs through the valley of "
           "Ostrand and feeds three lakes.", "questions": [{"question": "Which valley does the Velmora cross?",
                                                            "answers": ["Ostrand"]}]}
EDITS = ["The Velmora crosses Ostrand.", "Ostrand is a valley.\nThe Velmora feeds three lakes.\nLakes: three."]
SUITE = RegressionSuite.bundled()


def columns(n):
    return {k: [CONTEXT[k]] * n for k in CONTEXT}


def make_loop(model_dir, tokenizer, **overrides):
    settings = dict(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2, learning_rate=5e-3)
    return InnerLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
                     InnerLoopConfig(**{**settings, **overrides}))


def count_forwards(loop):
    calls = []
    loop.model.get_base_model().register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def run_by_hand(loop, reward, edit):
    """The self-edit's inner run outside the reward, with the reward's seed; its adapter stays live after."""
    task = KnowledgeTask()
    plan = task.plan(CONTEXT, edit, **reward.default_hyperparameters())
    return loop.run(plan, task.probe(CONTEXT), context_id=context_key(CONTEXT),
                    seed=reward._seed(context_key(CONTEXT), edit, 0))


@pytest.mark.parametrize("metric", ["perplexity", "qa"])
def test_forgetting_is_measured_on_the_adapted_model_after_the_same_run(metric, tiny_model_dir, tiny_tokenizer):
    loop = make_loop(tiny_model_dir, tiny_tokenizer, learning_rate=1e-2)
    reward = SelfEditReward(KnowledgeTask(), loop, progress=False,
                            terms=RewardTerms(forgetting_weight=1.0, general_metric=metric))
    reward([""], [EDITS[1]], **columns(1))
    measured = reward.last_results[0][0].measures["general"]

    def general(model):
        return perplexity(model, tiny_tokenizer, SUITE.heldout_text) if metric == "perplexity" \
            else qa_scores(model, tiny_tokenizer, SUITE)[1]

    by_hand = run_by_hand(loop, reward, EDITS[1])
    after = general(loop.model)  # the adapter the run trained, still live
    loop._neutralise_adapter()
    before = general(loop.model)
    assert by_hand.score_after == pytest.approx(reward.last_results[0][0].score_after, abs=1e-5)
    assert measured == pytest.approx(after, rel=1e-5)
    assert abs(after - before) > 1e-4 * abs(before)  # training moved it: a measure taken before training would not
    expected = after / before - 1 if metric == "perplexity" else 1 - after / before
    assert reward.last_terms[0]["forgetting"] == pytest.approx(expected, rel=1e-4)
    assert reward.general_before() == pytest.approx(before, rel=1e-6)


def test_constraints_read_the_adapted_models_greedy_answers(tiny_model_dir, tiny_tokenizer):
    # every linear layer, so that 5 epochs on "Answer: Ostrand" change the tiny model's greedy answers ("::::" before)
    loop = make_loop(tiny_model_dir, tiny_tokenizer, learning_rate=1e-2, num_epochs=5,
                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    edit = "Answer: Ostrand\n" * 4
    seen = []

    def record(outputs):
        seen.append(dict(outputs.samples))
        return None

    terms = RewardTerms(constraint_weight=0.25, constraints=[record], banned_phrases=["ostrand"])
    reward = SelfEditReward(KnowledgeTask(), loop, progress=False, terms=terms)
    [value] = reward([""], [edit], **columns(1))
    prompts = terms.constraint_prompts(KnowledgeTask().probe(CONTEXT))
    assert list(seen[0]) == prompts and len(prompts) == 1 + 4  # the probe's question, then the suite's first 4
    run_by_hand(loop, reward, edit)
    adapted = greedy_answers(loop.model, tiny_tokenizer, prompts, max_new_tokens=terms.answer_tokens)
    loop._neutralise_adapter()
    unadapted = greedy_answers(loop.model, tiny_tokenizer, prompts, max_new_tokens=terms.answer_tokens)
    assert not any("ostrand" in a.lower() for a in unadapted)  # so answers read before training would pass
    assert list(seen[0].values()) == adapted and "Ostrand" in adapted[0]
    assert reward.last_terms[0]["violations"] == 1.0  # `record` passes, the banned phrase fails
    assert value == pytest.approx(reward.last_terms[0]["gain"] - 0.25)


def test_weights_combine_as_documented(tiny_model_dir, tiny_tokenizer):
    plain = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False)
    gains = plain([""] * 2, EDITS, **columns(2))

    def fails(outputs):
        return "no"

    def fails_too(outputs):
        return False

    # the suite's first 9 sentences: on them one of EDITS improves the tiny model's perplexity and one raises it
    opening = RegressionSuite(" ".join(re.split(r"(?<=[.!?])\s+", SUITE.heldout_text)[:9]), SUITE.qa)
    terms = RewardTerms(forgetting_weight=30.0, constraint_weight=0.5, constraints=[fails, fails_too], suite=opening)
    reward = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False, terms=terms)
    values = reward([""] * 2, EDITS, **columns(2))
    for value, gain, t in zip(values, gains, reward.last_terms, strict=True):
        assert t["gain"] == gain  # the same runs as without the terms (same seeds)
        assert t["violations"] == 2.0
        assert value == pytest.approx(gain - 30.0 * max(0.0, t["forgetting"]) - 0.5 * 2)
        assert t["reward"] == value
    signs = {t["forgetting"] > 0 for t in reward.last_terms}
    assert signs == {True, False}  # one self-edit improved the held-out text, one forgot: both cases combined above
    assert terms.penalty(-0.3, 0.0) == 0.0 and terms.penalty(0.2, 1.0) == pytest.approx(30 * 0.2 + 0.5)


def test_zero_weights_are_todays_reward_at_todays_cost(tiny_model_dir, tiny_tokenizer):
    today = make_loop(tiny_model_dir, tiny_tokenizer)
    zero = make_loop(tiny_model_dir, tiny_tokenizer)
    on = make_loop(tiny_model_dir, tiny_tokenizer)
    counts = [count_forwards(loop) for loop in (today, zero, on)]
    jobs = []
    original = zero.run_many
    zero.run_many = lambda batch, **kw: jobs.extend(batch) or original(batch, **kw)
    logged = [{}, {}, {}]
    rewards = [
        SelfEditReward(KnowledgeTask(), today, progress=False),
        SelfEditReward(KnowledgeTask(), zero, progress=False,
                       terms=RewardTerms(forgetting_weight=0.0, general_metric="qa", constraint_weight=0.0)),
        SelfEditReward(KnowledgeTask(), on, progress=False, terms=RewardTerms(forgetting_weight=1e-9)),
    ]
    values = [r([""] * 2, EDITS, log_metric=log.__setitem__, log_extra=log.__setitem__, **columns(2))
              for r, log in zip(rewards, logged)]
    assert values[1] == values[0]  # bit for bit
    assert len(counts[1]) == len(counts[0])  # not one forward more
    assert len(counts[2]) > len(counts[0])  # (the counter sees the forwards a measured term costs)
    assert all(job.measure is None for job in jobs) and rewards[1].last_terms is None
    assert set(logged[1]) == set(logged[0]) and not any(k.startswith("reward") for k in logged[1])
    assert values[2] == pytest.approx(values[0], abs=1e-6)


def test_each_term_is_logged_under_its_name(tiny_model_dir, tiny_tokenizer):
    terms = RewardTerms(forgetting_weight=1.0, general_metric="qa", constraint_weight=0.1,
                        banned_phrases=["zzqx-never-said"])
    reward = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False, terms=terms)
    metrics, table = {}, {}
    reward([""] * 2, EDITS, log_metric=metrics.__setitem__, log_extra=table.__setitem__, **columns(2))
    for name in ("gain", "forgetting", "violations"):
        values = [t[name] for t in reward.last_terms]
        assert metrics[f"reward/{name}"] == pytest.approx(sum(values) / 2)
        assert table[f"reward_{name}"] == [round(v, 5) for v in values]
    assert metrics["reward/general_before_qa"] == pytest.approx(reward.general_before())
    assert metrics["reward/violations"] == 0.0 and metrics["reward/forgetting"] != 0.0


def test_the_batched_engine_measures_each_slot_like_a_run_alone(tiny_model_dir, tiny_tokenizer):
    def run(k):
        terms = RewardTerms(forgetting_weight=1.0, constraint_weight=0.1, constraints=[lambda o: None])
        reward = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=k),
                                progress=False, terms=terms)
        values = reward([""] * 2, EDITS, **columns(2))
        return values, [runs[0].measures["general"] for runs in reward.last_results]

    (sequential, alone), (batched, slots) = run(1), run(2)
    assert alone[0] != pytest.approx(alone[1], rel=1e-6)  # the two adapters differ: each slot must be read by itself
    assert slots == pytest.approx(alone, rel=1e-5)
    assert batched == pytest.approx(sequential, abs=1e-5)


def test_stored_runs_keep_their_measures_and_are_keyed_by_the_terms(tiny_model_dir, tiny_tokenizer, tmp_path):
    store = tmp_path / "runs.jsonl"
    terms = RewardTerms(forgetting_weight=1.0)
    first = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False, store=store,
                           terms=terms)
    values = first([""] * 2, EDITS, **columns(2))
    again_loop = make_loop(tiny_model_dir, tiny_tokenizer)
    calls = count_forwards(again_loop)
    again = SelfEditReward(KnowledgeTask(), again_loop, progress=False, store=store, terms=RewardTerms(1.0))
    assert again([""] * 2, EDITS, **columns(2)) == values and again.last_terms == first.last_terms
    windows = math.ceil(len(encode_text(tiny_tokenizer, SUITE.heldout_text)) / 512)
    assert again.store.hits == 2 and len(calls) == windows  # no run: only the unadapted held-out text (not stored)
    plain = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False, store=store)
    plain([""] * 2, EDITS, **columns(2))
    assert plain.store.hits == 0  # runs without the terms' measures are not those runs


def test_an_inner_loop_that_drops_the_measures_is_refused(tiny_model_dir, tiny_tokenizer):
    loop = make_loop(tiny_model_dir, tiny_tokenizer)
    original = loop.run_many
    loop.run_many = lambda jobs, **kw: original([type(j)(j.plan, j.probe, j.context_id, j.seed) for j in jobs], **kw)
    reward = SelfEditReward(KnowledgeTask(), loop, progress=False, terms=RewardTerms(forgetting_weight=1.0))
    with pytest.raises(RuntimeError, match="without the reward terms' measures"):
        reward([""], [EDITS[0]], **columns(1))


def test_a_diverged_general_measure_fails_the_run(tiny_model_dir, tiny_tokenizer):
    terms = RewardTerms(forgetting_weight=1.0)
    terms.measure_general = lambda model, tokenizer, probe=None: {"general": math.inf}
    reward = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False, terms=terms,
                            min_uniform_failures=0)
    with pytest.raises(ValueError, match="general is inf"):  # the unadapted model's value, measured first
        reward.general_before()
    reward._general_before[reward.inner_loop.policy_version] = 10.0
    [value] = reward([""], [EDITS[0]], **columns(1))
    run = reward.last_results[0][0]
    assert run.error == "nan_loss" and "general is inf" in run.error_message and value == 0.0


def test_reward_terms_refuse_bad_settings():
    with pytest.raises(ValueError, match="forgetting_weight must be a finite number >= 0"):
        RewardTerms(forgetting_weight=-1.0)
    with pytest.raises(ValueError, match="general_metric must be one of"):
        RewardTerms(general_metric="bleu")
    with pytest.raises(ValueError, match="constraint_weight > 0 but there is no constraint"):
        RewardTerms(constraint_weight=1.0)
    with pytest.raises(ValueError, match="constraint_weight is 0"):
        RewardTerms(banned_phrases=["x"])
    with pytest.raises(ValueError, match="non-blank phrases"):
        RewardTerms(constraint_weight=1.0, banned_phrases=[" "])
    assert not RewardTerms().active and RewardTerms().suite is None  # nothing loaded when off


def test_config_reaches_and_checks_the_reward_terms(tmp_path):
    def config(**kw):
        return SEALConfig(output_dir=str(tmp_path), use_cpu=True, **kw)

    args = config(reward_forgetting_weight=0.5, reward_general_metric="qa", reward_constraint_weight=2.0,
                  reward_banned_phrases="as an AI")
    terms = reward_terms(args, [lambda outputs: None])
    assert (terms.forgetting_weight, terms.general_metric, terms.constraint_weight) == (0.5, "qa", 2.0)
    assert terms.banned_phrases == ("as an AI",) and len(terms._checks) == 2
    assert not reward_terms(config()).active
    for kw, message in [(dict(reward_forgetting_weight=-0.1), "reward_forgetting_weight must be a finite number"),
                        (dict(reward_constraint_weight=float("nan")), "reward_constraint_weight must be a finite"),
                        (dict(reward_general_metric="loss"), "reward_general_metric='loss'; choose one of"),
                        (dict(reward_banned_phrases=["ok", ""]), "reward_banned_phrases must be a list of non-blank"),
                        (dict(reward_banned_phrases=["x"]), "reward_banned_phrases is set but reward_constraint_weight")]:
        with pytest.raises(ValueError, match=message):
            config(**kw)
    with pytest.raises(ValueError, match="reward_constraint_weight > 0 but there is no constraint"):
        reward_terms(config(reward_constraint_weight=1.0))


def test_recipes_range_check_the_weights():
    from seal_trl.cli.recipe_schema import RANGES

    assert not RANGES["reward_forgetting_weight"].allows(-0.5) and RANGES["reward_forgetting_weight"].allows(0)
    assert not RANGES["reward_constraint_weight"].allows(-1)


def test_terms_reach_the_inner_measure_through_torch_no_grad(tiny_model_dir, tiny_tokenizer):
    grad_enabled = []

    def probe_grad(outputs):
        grad_enabled.append(torch.is_grad_enabled())

    reward = SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer), progress=False,
                            terms=RewardTerms(constraint_weight=1.0, constraints=[probe_grad]))
    reward([""], [EDITS[0]], **columns(1))
    assert grad_enabled == [False]
