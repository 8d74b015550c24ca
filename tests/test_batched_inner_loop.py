"""Batched inner loop: K self-edits trained together in K adapter slots must equal K sequential runs."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner import batched
from seal_trl.inner.jobs import InnerJob
from seal_trl.plans import PlanBounds, TrainingPlan
from seal_trl.probes import knowledge_probe

QUORN = [("What river runs through Ostrand?", "Velmora"), ("When did the expedition leave port?", "1874")]
TOWER = [("Who built the tower?", "Mara Vell"), ("What is it made of?", "grey stone")]


def probes():
    return {"quorn": knowledge_probe("The Quorn Expedition", QUORN, context_id="quorn"),
            "tower": knowledge_probe("Vell Tower", TOWER, context_id="tower")}


def mixed_jobs():
    """Plans with different example counts, epochs, learning rates, batch sizes and loss masks."""
    p = probes()
    plans = [
        (TrainingPlan.from_texts([f"Topic: The Quorn Expedition\nQuestion: {q}\nAnswer: {a}" for q, a in QUORN],
                                 epochs=5), "quorn"),
        (TrainingPlan.from_texts(["Colours: red green blue.", "A company built bridges.", "x y z"], epochs=3,
                                 learning_rate=3e-3), "quorn"),
        (TrainingPlan.from_texts(["Mara Vell built the tower in 1901.", "It is grey stone.", "By the sea."],
                                 epochs=4, batch_size=2), "tower"),
        (TrainingPlan.from_pairs([("Who built the tower?", " Mara Vell"), ("Made of?", " grey stone")], epochs=6,
                                 learning_rate=5e-3), "tower"),
    ]
    return [InnerJob(plan, p[cid], context_id=cid, seed=10 + i) for i, (plan, cid) in enumerate(plans)]


def make_loop(model_dir, tokenizer, **overrides):
    config = InnerLoopConfig(lora_r=8, lora_alpha=16, **overrides)
    return InnerLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, config)


def record_run_many(loop, monkeypatch) -> list[int]:
    """The number of jobs of each `loop.run_many` call, recorded as they happen."""
    calls = []
    original = loop.run_many
    monkeypatch.setattr(loop, "run_many", lambda jobs, **kw: calls.append(len(jobs)) or original(jobs, **kw))
    return calls


def assert_same(sequential, batch, tol=1e-4):
    for one, many in zip(sequential, batch, strict=True):
        assert one.error == many.error
        assert one.steps == many.steps and one.tokens_trained == many.tokens_trained
        assert one.score_before == pytest.approx(many.score_before, abs=1e-6)
        assert one.reward == pytest.approx(many.reward, abs=tol)
        assert many.losses == pytest.approx(one.losses, abs=tol)


@pytest.fixture(scope="module")
def sequential_results(tiny_model_dir, tiny_tokenizer):
    return make_loop(tiny_model_dir, tiny_tokenizer).run_many(mixed_jobs())


def test_k4_equals_four_sequential_runs(tiny_model_dir, tiny_tokenizer, sequential_results):
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)
    base = {k: v.clone() for k, v in loop.model.get_base_model().state_dict().items() if "lora_" not in k}
    results = loop.run_many(mixed_jobs())
    assert all(r.ok for r in results)
    assert [r.steps for r in results] == [10, 9, 8, 12]  # different lengths finished at different times
    assert_same(sequential_results, results)
    after = loop.model.get_base_model().state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())
    # the engine's own one-at-a-time path still works afterwards and agrees
    again = loop.run(mixed_jobs()[0].plan, mixed_jobs()[0].probe, context_id="quorn", seed=10)
    assert again.reward == pytest.approx(sequential_results[0].reward, abs=1e-4)


@pytest.mark.parametrize("k", [2, 8])
def test_fewer_or_more_slots_than_jobs(tiny_model_dir, tiny_tokenizer, sequential_results, k):
    results = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=k).run_many(mixed_jobs())
    assert_same(sequential_results, results)


def test_grouped_matmul_and_its_gather_fallback_agree(tiny_model_dir, tiny_tokenizer, sequential_results,
                                                      monkeypatch):
    """The packed row goes through `grouped_mm` where it runs (here: CPU fp32) and gather + bmm elsewhere."""
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)
    assert loop._batched_trainer(4).slots.grouped
    calls = []
    real = torch.nn.functional.grouped_mm
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert_same(sequential_results, loop.run_many(mixed_jobs()))
    assert calls
    monkeypatch.setattr(batched, "grouped_mm_supported", lambda *a, **k: False)
    fallback = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)
    assert not fallback._batched_trainer(4).slots.grouped
    calls.clear()
    assert_same(sequential_results, fallback.run_many(mixed_jobs()))
    assert not calls


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "gather"])
def test_a_diverged_slot_leaves_the_others_alone(tiny_model_dir, tiny_tokenizer, monkeypatch, grouped):
    """Slot 0 diverges (its activations go NaN); slot 1, shorter, is padded in the gather layout with token 0,
    which must not carry that NaN into slot 1's gradients."""
    if not grouped:
        monkeypatch.setattr(batched, "grouped_mm_supported", lambda *a, **k: False)
    probe = probes()["quorn"]
    jobs = [InnerJob(TrainingPlan.from_texts(["The Quorn Expedition left port in 1874 along the river Velmora."] * 2,
                                             epochs=3, learning_rate=1e30), probe, context_id="quorn", seed=1),
            InnerJob(TrainingPlan.from_texts(["It left in 1874.", "Velmora."], epochs=3), probe, context_id="quorn",
                     seed=2)]
    settings = dict(max_grad_norm=None, lr_schedule="constant", bounds=PlanBounds(max_learning_rate=1e30))
    alone = make_loop(tiny_model_dir, tiny_tokenizer, **settings).run_many(jobs)
    together = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=2, **settings).run_many(jobs)
    assert alone[0].error == together[0].error == "nan_loss"
    assert together[1].ok
    assert_same(alone[1:], together[1:])


def test_grouped_matmul_support_check():
    ok = batched.grouped_mm_supported([torch.Size([8, 64]), torch.Size([64, 8])], torch.float32, torch.device("cpu"))
    assert ok
    # 16-byte strides: a rank of 3 fp32 columns cannot be used
    assert not batched.grouped_mm_supported([torch.Size([3, 64])], torch.float32, torch.device("cpu"))
    assert not batched.grouped_mm_supported([torch.Size([8, 64])], torch.float64, torch.device("cpu"))


def test_one_slot_nan_leaves_the_others_untouched(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    real = batched.per_slot_mean_nll
    calls = {"n": 0}

    def poison_slot_one(*args):
        losses = real(*args)
        calls["n"] += 1
        if calls["n"] == 3:  # the third training step
            losses = losses.clone()
            losses[1] = float("nan")
        return losses

    monkeypatch.setattr(batched, "per_slot_mean_nll", poison_slot_one)
    results = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4).run_many(mixed_jobs())
    bad = results[1]
    assert bad.error == "nan_loss" and bad.reward == 0.0 and bad.score_after is None
    assert "step 2" in bad.error_message and bad.steps == 2
    assert_same([sequential_results[i] for i in (0, 2, 3)], [results[i] for i in (0, 2, 3)])


def test_invalid_plan_takes_no_slot(tiny_model_dir, tiny_tokenizer, sequential_results):
    jobs = mixed_jobs()
    too_long = InnerJob(TrainingPlan.from_texts(["a"], epochs=50), jobs[0].probe, context_id="quorn", seed=1)
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4, bounds=PlanBounds(step_budget=30))
    results = loop.run_many([jobs[0], too_long, *jobs[1:]])
    assert results[1].error == "out_of_bounds" and results[1].reward == 0.0
    assert_same(sequential_results, [results[0], *results[2:]])


def test_a_plan_that_raises_while_encoding_fails_alone(tiny_model_dir, tiny_tokenizer, sequential_results,
                                                      monkeypatch):
    jobs = mixed_jobs()
    odd = InnerJob(TrainingPlan.from_texts(["an odd one"]), jobs[0].probe, context_id="quorn", seed=1)
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)
    real = loop._encode
    monkeypatch.setattr(loop, "_encode", lambda plan: (_ for _ in ()).throw(TypeError("odd tokenizer"))
                        if plan is odd.plan else real(plan))
    results = loop.run_many([jobs[0], odd, *jobs[1:]])
    assert results[1].error == "exception" and "TypeError: odd tokenizer" in results[1].error_message
    assert results[1].reward == 0.0 and results[1].traceback
    assert_same(sequential_results, [results[0], *results[2:]])


def test_gradient_checkpointing_trains_in_slots(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    def no_fallback(*args, **kwargs):
        raise AssertionError("the batched group failed and fell back to one at a time")

    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4, gradient_checkpointing=True)
    monkeypatch.setattr(loop, "run", no_fallback)
    assert_same(sequential_results, loop.run_many(mixed_jobs()))


def test_generation_grader_scores_each_slot(tiny_model_dir, tiny_tokenizer):
    jobs = mixed_jobs()
    one = make_loop(tiny_model_dir, tiny_tokenizer, grader="f1", max_new_tokens=6).run_many(jobs)
    many = make_loop(tiny_model_dir, tiny_tokenizer, grader="f1", max_new_tokens=6, batch_self_edits=4).run_many(jobs)
    assert_same(one, many)


@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.bfloat16])  # bf16: as TRL keeps a QLoRA policy's
def test_lora_policy_adapter_stays_on_in_slots(tiny_model_dir, tiny_tokenizer, adapter_dtype):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.3)
            if "lora_" in name:
                p.data = p.data.to(adapter_dtype)
    loops = [make_loop(tiny_model_dir, tiny_tokenizer), make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)]
    for loop in loops:
        loop.sync_from(policy)
    assert_same(*(loop.run_many(mixed_jobs()) for loop in loops))
    assert all(not p.requires_grad for n, p in loops[1].model.named_parameters() if ".policy." in n)


def test_four_bit_base(tiny_model_dir, tiny_tokenizer):
    config = dict(lora_r=8, lora_alpha=16, load_in_4bit=True)
    one = InnerLoop.from_pretrained(str(tiny_model_dir), InnerLoopConfig(**config)).run_many(mixed_jobs())
    many = InnerLoop.from_pretrained(str(tiny_model_dir), InnerLoopConfig(batch_self_edits=4, **config)
                                     ).run_many(mixed_jobs())
    assert all(r.ok for r in many)
    assert_same(one, many)


def test_a_failing_group_is_rerun_one_at_a_time(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    def broken(self, slots):
        raise RuntimeError("simulated allocator failure")

    monkeypatch.setattr(batched.BatchedTrainer, "train_and_score", broken)
    results = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4).run_many(mixed_jobs())
    assert_same(sequential_results, results, tol=1e-6)


def test_reward_function_batches_its_completions(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from seal_trl.reward import SelfEditReward
    from seal_trl.tasks.knowledge import KnowledgeTask

    task = KnowledgeTask()
    context = {"context_id": "quorn", "title": "The Quorn Expedition",
               "context": "The river Velmora runs through Ostrand. The expedition left port in 1874.",
               "questions": [{"question": q, "answers": [a]} for q, a in QUORN]}
    columns = {f: [context[f]] * 3 for f in task.context_fields}
    completions = ["Velmora is a river.\nOstrand lies on it.", "1874 was the year.", "Ships left port."]
    rewards, metrics = {}, {}
    for k in (1, 3, "auto"):
        loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=k, num_epochs=3)
        calls = record_run_many(loop, monkeypatch)
        metrics[k] = {}
        rewards[k] = SelfEditReward(task, loop, repeats=2)(prompts=[""] * 3, completions=completions,
                                                           log_metric=metrics[k].__setitem__, **columns)
        assert calls == [6]  # 3 self-edits x 2 repeats in one call
    assert rewards[3] == pytest.approx(rewards[1], abs=1e-4)
    assert rewards["auto"] == pytest.approx(rewards[1], abs=1e-4)
    # the K that "auto" chose is logged with the inner metrics; a set K is not
    assert metrics["auto"]["inner/batch_self_edits"] in (1, 2, 4, 8)
    assert "inner/batch_self_edits" not in metrics[3]


def test_held_out_evaluation_batches_its_self_edits(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from seal_trl.evaluation import evaluate_methods
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled

    contexts = load_bundled("validation")[:3]
    edits = ["The passage names a place.\nIt has a date.", "no usable lines?", "A person is named.\nThey built it."]
    task = KnowledgeTask()
    out = {}
    for k in (1, 2):
        loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=k, num_epochs=2)
        calls = record_run_many(loop, monkeypatch)
        monkeypatch.setattr("seal_trl.evaluation.generate_self_edits",
                            lambda model, tok, task, ctx, **kw: [edits[contexts.index(ctx[0])]])
        scores, details = evaluate_methods(loop, task, contexts, ["passage", "self-edit"], policy=object(),
                                           tokenizer=tiny_tokenizer, progress=False)
        # chunks of K contexts per run_many call; each method covers every context once
        assert calls == ([1, 1, 1] if k == 1 else [2, 1]) * 2
        assert len(scores["passage"]) == len(scores["self-edit"]) == 3
        out[k] = (scores, details["errors"])
    assert out[2][1] == out[1][1]
    for method in ("passage", "self-edit"):
        assert out[2][0][method] == pytest.approx(out[1][0][method], abs=1e-4)


def test_config_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_self_edits"):
        InnerLoopConfig(batch_self_edits=0)


def test_packing_keeps_examples_apart():
    from seal_trl.inner.packing import pack_slots
    from seal_trl.inner.tensors import IGNORE_INDEX, EncodedExample

    a = EncodedExample(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7])
    b = EncodedExample(input_ids=[8, 9], labels=[8, 9])
    c = EncodedExample(input_ids=[1, 2, 3, 4], labels=[1, 2, 3, 4])
    packed = pack_slots([(2, [a, b]), (0, [c])])
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # no example is trained to predict the first token of the next one
    assert packed.labels.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX, 2, 3, 4]]
    assert packed.token_slots.tolist() == [2, 2, 2, 2, 2, 0, 0, 0, 0] and packed.slots.tolist() == [2, 0]
    assert packed.tokens_per_slot == {2: 5, 0: 4}
    x = torch.arange(9.0)
    grouped = x[packed.pad_index]
    assert grouped.shape == (2, 5) and grouped[1, :4].tolist() == [5.0, 6.0, 7.0, 8.0]
    assert torch.equal(grouped.flatten()[packed.unpad_index], x)


def test_packed_forward_matches_separate_forwards(tiny_model, tiny_tokenizer):
    """transformers keeps packed examples apart when given restarting position ids and no attention mask."""
    from seal_trl.inner.packing import pack_slots
    from seal_trl.inner.tensors import encode_example

    texts = ["The river Velmora runs through Ostrand.", "Mara Vell built the tower.", "x y z"]
    examples = [encode_example(tiny_tokenizer, "", t, loss_on_prompt=True, add_eos=False) for t in texts]
    packed = pack_slots([(0, examples[:2]), (1, examples[2:])])
    with torch.no_grad():
        together = tiny_model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
        start = 0
        for e in examples:
            alone = tiny_model(input_ids=torch.tensor([e.input_ids])).logits[0]
            assert torch.allclose(together[start : start + len(e.input_ids)], alone, atol=1e-5)
            start += len(e.input_ids)


def test_slots_run_attention_per_example(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    """The packed training row runs attention example by example (`packed_attention`), with the same rewards."""
    from seal_trl.inner import packed_attention

    lengths = []
    original = packed_attention.scaled_dot_product_attention
    monkeypatch.setattr(packed_attention, "scaled_dot_product_attention",
                        lambda q, *a, **kw: lengths.append(q.shape[2]) or original(q, *a, **kw))
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=4)
    assert_same(sequential_results, loop.run_many(mixed_jobs()))
    assert lengths and loop.model.config._attn_implementation == "sdpa"


# ----- batch_self_edits="auto" ------------------------------------------------------------------------------

def test_pick_slots_prefers_the_smallest_k_near_the_fastest():
    from seal_trl.inner.auto_slots import pick_slots

    assert pick_slots({1: 10.0, 2: 8.0, 4: 6.9, 8: 7.0}) == 4  # 8 is no faster than 4
    assert pick_slots({1: 6.1, 2: 5.3, 4: 5.0, 8: 5.2}) == 4  # measured on 2 cores: 2 is 6% off the fastest
    assert pick_slots({1: 10.0, 2: 9.8, 4: 9.7, 8: 9.6}) == 1  # within 5% of the fastest: one at a time
    assert pick_slots({1: 10.0, 2: 10.5, 4: 5.0}) == 4  # a K that does not pay does not hide a larger one
    assert pick_slots({1: 10.0, 2: 9.8}, tolerance=0.0) == 2


def test_auto_measures_once_and_matches_sequential(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    from seal_trl.inner import auto_slots, engine

    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits="auto")
    assert loop.max_batch_slots == 8 and loop.batch_slots() == 1  # nothing measured yet
    measured = []
    monkeypatch.setattr(engine, "choose_slots",
                        lambda *a, **k: measured.append(1) or auto_slots.choose_slots(*a, **k))
    results = loop.run_many(mixed_jobs())
    assert_same(sequential_results, results)
    choice = loop.slot_choice
    assert sorted(choice.seconds) == [1, 2, 4, 8] and all(s > 0 for s in choice.seconds.values())
    assert choice.slots == auto_slots.pick_slots(choice.seconds)
    assert f"chose K={choice.slots}" in choice.describe()
    assert_same(sequential_results, loop.run_many(mixed_jobs()))
    assert measured == [1]  # once per InnerLoop


def test_auto_uses_the_measured_times(tiny_model_dir, tiny_tokenizer, sequential_results, monkeypatch):
    from seal_trl.inner import auto_slots

    timed = []

    def fake_time(loop, work, k, *, warm_up=False):
        timed.append((k, "warm-up" if warm_up else len(work)))
        if k == 4:
            raise torch.OutOfMemoryError("no room for 4 slots")
        return {1: 10.0, 2: 7.0}[k]

    monkeypatch.setattr(auto_slots, "_time_slots", fake_time)
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits="auto")
    calls = []
    real = batched.run_batched
    monkeypatch.setattr("seal_trl.inner.engine.run_batched",
                        lambda loop_, jobs, k, **kw: calls.append(k) or real(loop_, jobs, k, **kw))
    assert_same(sequential_results, loop.run_many(mixed_jobs()))
    # every candidate times the same 8 pieces of work (4 jobs cycled); the out-of-memory K ends the walk
    assert timed == [(1, "warm-up"), (1, 8), (2, "warm-up"), (2, 8), (4, "warm-up")]
    assert loop.slot_choice.slots == 2 and loop.slot_choice.stopped == "K=4 ran out of memory"
    assert calls == [2]


def test_auto_measurement_leaves_the_rng_alone(tiny_model_dir, tiny_tokenizer):
    from seal_trl.inner.auto_slots import choose_slots

    loop = make_loop(tiny_model_dir, tiny_tokenizer, lora_dropout=0.1)  # dropout draws from the global RNG
    torch.manual_seed(123)
    before = torch.get_rng_state()
    choice = choose_slots(loop, mixed_jobs(), candidates=[1, 2])
    assert set(choice.seconds) == {1, 2}
    assert torch.equal(torch.get_rng_state(), before)


def test_auto_with_nothing_trainable_runs_one_at_a_time(tiny_model_dir, tiny_tokenizer):
    probe = mixed_jobs()[0].probe
    too_long = [InnerJob(TrainingPlan.from_texts(["a"], epochs=50), probe, context_id="quorn", seed=s) for s in (1, 2)]
    loop = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits="auto", bounds=PlanBounds(step_budget=30))
    results = loop.run_many(too_long)
    assert [r.error for r in results] == ["out_of_bounds"] * 2
    assert loop.slot_choice is None  # measured on the next call that has work


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("4", 4), (3, 3)])
def test_batch_self_edits_settings(value, expected):
    from seal_trl.config import SEALConfig

    assert InnerLoopConfig(batch_self_edits=value).batch_self_edits == expected
    config = SEALConfig(output_dir="/tmp/seal-auto", inner_batch_self_edits=value, use_cpu=True, report_to=[])
    assert config.inner_loop_config().batch_self_edits == expected


@pytest.mark.parametrize("value", [0, "0", "many", True, 2.5])
def test_batch_self_edits_rejects(value):
    with pytest.raises(ValueError, match=r"batch_self_edits must be an integer >= 1 .* or 'auto'"):
        InnerLoopConfig(batch_self_edits=value)


def test_auto_timing_survives_failures(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from seal_trl.inner import auto_slots
    from seal_trl.plans import SelfEditError

    loop = make_loop(tiny_model_dir, tiny_tokenizer)

    def nan_loss(*args, **kwargs):
        raise SelfEditError("nan_loss", "training loss became nan at step 0", field="learning_rate")

    monkeypatch.setattr(loop, "_train", nan_loss)  # every sequential self-edit fails: still timed, no crash
    real = auto_slots._time_slots

    def broken_at_two(loop_, work, k, *, warm_up=False):
        if k == 2:
            raise RuntimeError("a kernel that is not there")
        return real(loop_, work, k, warm_up=warm_up)

    monkeypatch.setattr(auto_slots, "_time_slots", broken_at_two)
    choice = auto_slots.choose_slots(loop, mixed_jobs())
    assert list(choice.seconds) == [1] and choice.slots == 1 and choice.stopped == "K=2 failed (RuntimeError)"
