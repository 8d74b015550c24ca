"""bf16 autocast in the inner loop: forward passes in bf16, weights in fp32, rewards close to fp32's."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.config import SEALConfig
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner.jobs import InnerJob
from seal_trl.plans import TrainingPlan
from seal_trl.probes import knowledge_probe

FACTS = [("What river runs through Ostrand?", "Velmora"), ("When did the expedition leave port?", "1874")]


def make_loop(model_dir, tokenizer, **config):
    return InnerLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
                     InnerLoopConfig(lora_r=8, lora_alpha=16, num_epochs=4, target_modules=("q_proj", "v_proj"),
                                     **config))


def plans():
    # lr 1e-2: at the default 1e-3 the tiny model barely moves (rewards 0.00445 vs 0.00444 in fp32), and the ranking
    # check below then compares noise that differs by CPU (it failed on an AVX512-BF16 machine); at 1e-2 the answer
    # plan's gain is ~4x the unrelated one's in fp32 and in bf16
    texts = [f"Topic: The Quorn Expedition\nQuestion: {q}\nAnswer: {a}" for q, a in FACTS]
    return [TrainingPlan.from_texts(texts, epochs=4, learning_rate=1e-2),
            TrainingPlan.from_texts(["Colours: red green blue.", "The Quorn left port in 1874."], epochs=4,
                                    learning_rate=1e-2)]


def probe():
    return knowledge_probe("The Quorn Expedition", FACTS, context_id="quorn")


def matmul_dtypes(loop):
    """The dtypes of a projection's outputs seen during the next calls."""
    seen = set()
    layer = loop.model.get_base_model().model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    return seen


@pytest.mark.parametrize("slots", [1, 2])
def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_fp32_weights(tiny_model_dir, tiny_tokenizer, slots):
    loop = make_loop(tiny_model_dir, tiny_tokenizer, autocast="bf16", batch_self_edits=slots)
    seen = matmul_dtypes(loop)
    results = loop.run_many([InnerJob(p, probe(), context_id="quorn", seed=1) for p in plans()])
    assert all(r.ok for r in results)
    assert seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in loop.model.parameters())

    plain = make_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=slots)
    seen = matmul_dtypes(plain)
    plain.run_many([InnerJob(plans()[0], probe(), context_id="quorn", seed=1)])
    assert seen == {torch.float32}


def test_bf16_autocast_rewards_agree_with_fp32(tiny_model_dir, tiny_tokenizer):
    jobs = [InnerJob(p, probe(), context_id="quorn", seed=1) for p in plans()]
    fp32 = make_loop(tiny_model_dir, tiny_tokenizer).run_many(jobs)
    bf16 = make_loop(tiny_model_dir, tiny_tokenizer, autocast="bf16").run_many(jobs)
    for a, b in zip(fp32, bf16):
        assert b.score_before == pytest.approx(a.score_before, abs=0.05)
        assert b.reward == pytest.approx(a.reward, abs=0.1 * max(1.0, abs(a.reward)))
    assert fp32[0].reward - fp32[1].reward > 0.01  # a gap the ranking check can see (not rounding noise)
    assert (fp32[0].reward - fp32[1].reward) * (bf16[0].reward - bf16[1].reward) > 0  # same ranking


def test_bf16_autocast_setting_is_checked_and_warns_without_native_bf16(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                        monkeypatch, caplog):
    with pytest.raises(ValueError, match="autocast"):
        InnerLoopConfig(autocast="fp16")
    assert SEALConfig(output_dir=str(tmp_path), inner_autocast="bf16").inner_loop_config().autocast == "bf16"
    monkeypatch.setattr("seal_trl.inner.engine.cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="seal_trl.inner.engine"):
        make_loop(tiny_model_dir, tiny_tokenizer, autocast="bf16")
    assert "emulated" in caplog.text


def test_store_keys_tell_bf16_runs_from_fp32_ones(tiny_model_dir, tiny_tokenizer):
    from seal_trl.reward import SelfEditReward
    from seal_trl.tasks.knowledge import KnowledgeTask

    def settings(**config):
        return SelfEditReward(KnowledgeTask(), make_loop(tiny_model_dir, tiny_tokenizer, **config))._settings()

    fp32, bf16, compiled = settings(), settings(autocast="bf16"), settings(compile=True)
    assert fp32["inner"]["autocast"] == "off" and bf16["inner"]["autocast"] == "bf16" and bf16 != fp32
    assert compiled == fp32  # compiling changes float rounding only, like K slots
