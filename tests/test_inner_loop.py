import math

import pytest
import torch

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.plans import PlanBounds, TrainingPlan
from seal_trl.probes import knowledge_probe

FACTS = [("What river runs through Ostrand?", "Velmora"), ("When did the expedition leave port?", "1874")]


@pytest.fixture()
def probe():
    return knowledge_probe("The Quorn Expedition", FACTS, context_id="quorn")


@pytest.fixture()
def loop(tiny_model, tiny_tokenizer):
    return InnerLoop(tiny_model, tiny_tokenizer, InnerLoopConfig(lora_r=8, lora_alpha=16, num_epochs=10))


def answer_plan(**hp):
    texts = [f"Topic: The Quorn Expedition\nQuestion: {q}\nAnswer: {a}" for q, a in FACTS]
    return TrainingPlan.from_texts(texts, epochs=10, **hp)


def unrelated_plan():
    return TrainingPlan.from_texts(["Colours: red green blue yellow black white.", "A company built bridges."], epochs=10)


def base_weights(loop):
    return {k: v.detach().clone() for k, v in loop.model.get_base_model().state_dict().items() if "lora_" not in k}


def test_answer_plan_raises_score_more_than_unrelated_text(loop, probe):
    good = loop.run(answer_plan(), probe, seed=3)
    other = loop.run(unrelated_plan(), probe, seed=3)
    assert good.ok and other.ok
    assert good.score_after > good.score_before
    assert good.reward > other.reward + 0.05
    assert good.steps == 20 and len(good.losses) == 20 and good.tokens_trained > 0
    assert good.losses[-1] < good.losses[0]


def test_base_weights_bit_identical_after_runs(loop, probe):
    before = base_weights(loop)
    loop.run(answer_plan(), probe, seed=1)
    loop.run(unrelated_plan(), probe, seed=2)
    loop.run(answer_plan(learning_rate=1e-2), probe, seed=3)
    after = base_weights(loop)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_b_after_a_equals_b_alone(tiny_model_dir, tiny_tokenizer, probe):
    from transformers import AutoModelForCausalLM

    fresh = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                      InnerLoopConfig(lora_r=8, lora_alpha=16))
    alone = fresh.run(unrelated_plan(), probe, seed=11)
    used = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                     InnerLoopConfig(lora_r=8, lora_alpha=16))
    used.run(answer_plan(learning_rate=5e-3), probe, seed=4)
    after_a = used.run(unrelated_plan(), probe, seed=11)
    assert after_a.losses == alone.losses
    assert after_a.reward == alone.reward


def test_same_seed_same_reward_other_seed_differs(loop, probe):
    a = loop.run(answer_plan(), probe, seed=5)
    b = loop.run(answer_plan(), probe, seed=5)
    c = loop.run(answer_plan(), probe, seed=6)
    assert a.reward == b.reward and a.losses == b.losses
    assert c.losses != a.losses


def test_dropout_is_seeded_too(tiny_model, tiny_tokenizer, probe):
    loop = InnerLoop(tiny_model, tiny_tokenizer, InnerLoopConfig(lora_r=4, lora_alpha=8, lora_dropout=0.3))
    assert loop.run(answer_plan(), probe, seed=2).losses == loop.run(answer_plan(), probe, seed=2).losses


def test_score_is_cached_per_context_and_cleared_by_sync(loop, probe, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    calls = []
    original = loop.grader.score
    loop.grader.score = lambda *a: calls.append(1) or original(*a)
    first = loop.score(probe)
    loop.run(answer_plan(), probe, seed=1)
    assert loop.score(probe) == first and len(calls) == 2  # one before-score, one after-score
    loop.sync_from(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    loop.score(probe)
    assert len(calls) == 3


def test_score_ignores_the_last_trained_adapter(loop, probe):
    base = loop.score(probe, context_id="x")
    loop.run(answer_plan(), probe, seed=1)
    assert loop.score(probe, context_id="y") == pytest.approx(base, abs=1e-6)


def test_nan_loss_scores_zero_and_engine_recovers(loop, probe, monkeypatch):
    import seal_trl.inner.engine as engine

    real = engine.labelled_nll
    monkeypatch.setattr(engine, "labelled_nll", lambda *a: real(*a) * float("nan"))
    bad = loop.run(answer_plan(), probe, seed=1)
    assert bad.error == "nan_loss" and bad.reward == 0.0 and bad.score_after is None
    monkeypatch.setattr(engine, "labelled_nll", real)
    good = loop.run(answer_plan(), probe, seed=1)
    assert good.ok and good.reward > 0


def test_exception_inside_training_is_isolated(loop, probe, monkeypatch):
    import seal_trl.inner.engine as engine

    def boom(*a, **k):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(engine, "pad_right", boom)
    bad = loop.run(answer_plan(), probe, seed=1)
    assert bad.error == "exception" and "simulated kernel failure" in bad.error_message
    monkeypatch.undo()
    assert loop.run(answer_plan(), probe, seed=1).ok


@pytest.mark.parametrize(
    "plan, reason",
    [
        (TrainingPlan.from_texts(["x"] * 50, epochs=20), "over_budget"),
        (TrainingPlan.from_texts(["word " * 3000]), "too_long"),
        (TrainingPlan.from_texts([]), "empty"),
        (TrainingPlan.from_texts(["x"], learning_rate=5.0), "out_of_bounds"),
        (TrainingPlan.from_texts(["x"], epochs=-3), "out_of_bounds"),
    ],
)
def test_bad_plans_score_zero_with_reason(loop, probe, plan, reason):
    result = loop.run(plan, probe, seed=0)
    assert result.error == reason and result.reward == 0.0
    assert math.isfinite(result.score_before) and result.seconds >= 0
    assert loop.run(answer_plan(), probe, seed=0).ok


def test_completion_only_loss_ignores_prompts(loop, probe):
    # Prompt/answer pairs with completion-only loss: only the answers (and eos) carry loss, and it still learns.
    pairs = [(f"Topic: The Quorn Expedition\nQuestion: {q}\nAnswer:", f" {a}") for q, a in FACTS]
    result = loop.run(TrainingPlan.from_pairs(pairs, epochs=10), probe, seed=2)
    assert result.ok and result.reward > 0
    encoded = loop._encode(TrainingPlan.from_pairs(pairs))
    n_loss = sum(1 for e in encoded for label in e.labels if label != -100)
    answer_tokens = sum(len(loop.tokenizer(f" {a}", add_special_tokens=False)["input_ids"]) + 1 for _, a in FACTS)
    assert n_loss == answer_tokens  # answers + eos, nothing from the prompts


def test_sync_from_full_policy_matches_outputs(loop, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
    loop.sync_from(policy)
    loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(loop.model(ids).logits, policy(ids).logits, atol=1e-5)


def test_sync_from_a_bf16_lora_policy_computes_in_bf16_like_the_policy(loop, tiny_model_dir, tiny_tokenizer):
    """TRL keeps a QLoRA policy's adapter in bf16, and PEFT runs an adapter in its weights' dtype: a mirror of the
    same values in fp32 computes something else (about 1e-3 apart in the logits here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.data = (p.data + torch.randn_like(p) * 0.5 * ("lora_B" in name)).to(torch.bfloat16)
    ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
    loop.sync_from(policy.eval())
    loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(loop.model(ids).logits, policy(ids).logits, rtol=0, atol=1e-6)


def test_sync_from_lora_policy_copies_adapter_each_time(loop, tiny_model_dir, tiny_tokenizer, probe):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.1),
    )
    ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]

    def perturb_adapter():
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.5)

    policy.eval()
    for _ in range(2):
        perturb_adapter()
        loop.sync_from(policy)
        loop.reset_adapter(0)
        with torch.no_grad():
            assert torch.allclose(loop.model(ids).logits, policy(ids).logits, atol=1e-5)
    before = base_weights(loop)
    result = loop.run(answer_plan(), probe, seed=1)
    assert result.ok
    policy_adapter = {k: v for k, v in loop.model.state_dict().items() if ".policy." in k}
    assert policy_adapter and all(not p.requires_grad for n, p in loop.model.named_parameters() if ".policy." in n)
    loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(loop.model(ids).logits, policy(ids).logits, atol=1e-5)
    after = base_weights(loop)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sync_rejects_a_different_architecture(loop):
    from seal_trl.testing import build_tiny_model, build_tiny_tokenizer

    other = build_tiny_model(build_tiny_tokenizer(), hidden_size=32)
    with pytest.raises(ValueError, match="sync_from"):
        loop.sync_from(other)


def test_binary_reward(tiny_model, tiny_tokenizer, probe):
    loop = InnerLoop(tiny_model, tiny_tokenizer, InnerLoopConfig(lora_r=8, lora_alpha=16, reward="binary"))
    assert loop.run(answer_plan(), probe, seed=3).reward == 1.0


def test_config_errors_name_the_field(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="target_modules"):
        InnerLoopConfig(target_modules=())
    with pytest.raises(ValueError, match="reward"):
        InnerLoopConfig(reward="gain2")
    with pytest.raises(ValueError, match="target_modules"):
        InnerLoop(tiny_model, tiny_tokenizer, InnerLoopConfig(target_modules=("no_such_layer",)))


@pytest.mark.parametrize("bad, words", [
    ({"num_epochs": 25}, "num_epochs must be an integer in \\[1, 20\\]"),
    ({"num_epochs": 2.5}, "num_epochs"),
    ({"batch_size": 32}, "batch_size must be an integer in \\[1, 16\\]"),
    ({"learning_rate": 0.05}, "learning_rate must be in"),
    ({"learning_rate": float("nan")}, "learning_rate must be in"),
    ({"lora_alpha": 0}, "lora_alpha must be a number > 0"),
    ({"lora_r": 2.5}, "lora_r must be an integer"),
    ({"lora_r": True}, "lora_r must be an integer"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be a number > 0"),
])
def test_config_refuses_settings_under_which_every_self_edit_fails_or_adapts_nothing(bad, words):
    """Each of these made every reward 0 (plans out of bounds, a no-op adapter) or trained uphill (a negative
    clipping norm), with no error; they are refused when the config is built."""
    with pytest.raises(ValueError, match=words):
        InnerLoopConfig(**bad)


def test_config_keeps_in_bounds_settings_and_reads_one_module_name():
    config = InnerLoopConfig(num_epochs=20, batch_size=16, learning_rate=1e-2, max_grad_norm=None,
                             target_modules="q_proj")
    assert config.target_modules == ("q_proj",)
    assert InnerLoopConfig(learning_rate=5e-2, bounds=PlanBounds(max_learning_rate=1e-1)).learning_rate == 5e-2


def test_small_bounds_from_config(tiny_model, tiny_tokenizer, probe):
    loop = InnerLoop(tiny_model, tiny_tokenizer, InnerLoopConfig(lora_r=4, bounds=PlanBounds(step_budget=5)))
    assert loop.run(answer_plan(), probe).error == "over_budget"
    assert loop.run(answer_plan(max_steps=5), probe).ok


def test_four_bit_inner_loop_runs_and_syncs_on_cpu(tiny_model_dir, probe):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    loop = InnerLoop.from_pretrained(str(tiny_model_dir), InnerLoopConfig(lora_r=8, lora_alpha=16, load_in_4bit=True))
    assert any(type(m).__name__ == "Linear4bit" for m in loop.model.modules())
    result = loop.run(answer_plan(), probe, seed=1)
    assert result.ok and result.reward > 0
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(-1.0)
    loop.sync_from(policy)
    layer = loop.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    source = policy.model.layers[0].self_attn.q_proj.weight
    assert (dequantized - source).norm() / source.norm() < 0.2  # nf4 error, not the old (sign-flipped) weights
    assert loop.run(answer_plan(), probe, seed=1).ok


def _qlora_policy(path):
    """A QLoRA policy, the usual way to train a large model with TRL: 4-bit base + a LoRA adapter (B nonzero)."""
    from peft import LoraConfig, get_peft_model

    from seal_trl.models import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer(str(path), load_in_4bit=True)
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return policy.eval()


@pytest.mark.parametrize("inner_4bit", [False, True])
def test_sync_from_qlora_policy_matches_outputs(tiny_model_dir, tiny_tokenizer, probe, inner_4bit):
    """A 4-bit policy base goes into a full-precision inner model dequantised, and into a 4-bit one as the
    same packed bytes: either way the inner model then computes what the policy computes."""
    policy = _qlora_policy(tiny_model_dir)
    loop = InnerLoop.from_pretrained(str(tiny_model_dir), InnerLoopConfig(lora_r=8, lora_alpha=16,
                                                                         load_in_4bit=inner_4bit))
    ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        unsynced = loop.model(ids).logits
        expected = policy(ids).logits
    assert not torch.allclose(unsynced, expected, atol=1e-3)  # the adapter and the 4-bit base make a difference
    loop.sync_from(policy)
    loop.reset_adapter(0)
    with torch.no_grad():
        assert torch.allclose(loop.model(ids).logits, expected, atol=1e-4)
    result = loop.run(answer_plan(), probe, seed=1)
    assert result.ok and result.losses[-1] < result.losses[0] and result.score_after != result.score_before


def test_a_model_repacked_for_cpu_inference_is_unpacked_by_the_inner_loop(tiny_llama_dir, tiny_tokenizer, probe):
    """bitsandbytes repacks 4-bit weights for inference on AVX512-BF16 CPUs (forced here, on any CPU); a model
    handed to InnerLoop after such a scoring pass must train like one that never was (bias-free Llama layers,
    where the inference kernel raised nothing and passed no gradient to the layer input)."""
    from transformers import AutoModelForCausalLM

    from seal_trl.models import quantization_config_4bit

    def four_bit(force: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quantization_config_4bit())
        layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
        for layer in layers:
            layer.support_avx512bf16_for_cpu = force
        ids = tiny_tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model.eval()(ids)
        packed = [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers]
        assert all(packed) if force else not any(packed)
        return model

    config = InnerLoopConfig(lora_r=8, lora_alpha=16, num_epochs=10)
    expected = InnerLoop(four_bit(False), tiny_tokenizer, config).run(answer_plan(), probe, seed=1)
    repacked = InnerLoop(four_bit(True), tiny_tokenizer, config)
    layers = [m for m in repacked.model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    result = repacked.run(answer_plan(), probe, seed=1)
    assert expected.ok and result.ok, (expected.error_message, result.error_message)
    # Unpacking re-quantises the 4-bit scales, so equal up to that rounding, not bit for bit.
    assert result.score_before == pytest.approx(expected.score_before, abs=2e-3)
    assert result.reward == pytest.approx(expected.reward, rel=0.02, abs=2e-3)
    assert result.losses == pytest.approx(expected.losses, rel=0.02, abs=2e-3)
