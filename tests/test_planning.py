"""The planner's arithmetic with plain numbers (a toy shape, no model), and `seal-trl plan`'s command line.

Every expected figure below is worked out by hand, so dropping or changing any term of the planner fails a test."""

import json

import pytest

from seal_trl.cli.main import main
from seal_trl.planning import KNOWN_SHAPES, ModelShape, PlanSettings, RoundSettings, load_shape, plan_memory, plan_round
from seal_trl.planning.memory import GIB, NF4_BYTES

# hidden 4, MLP 8, 2 layers, 2 heads and 1 KV head of 2, vocabulary 10, untied, q/k/v biases
TOY = ModelShape("toy", hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=2,
                 vocab_size=10, tie_embeddings=False, attention_bias=True)
# per layer q 4x4, k 4x2, v 4x2, o 4x4, gate/up/down 4x8 each: 144; 2 layers: 288.
# embeddings and LM head 2 x 10 x 4 = 80; per layer 2 norms of 4 + biases 4 + 2 + 2 = 16, x 2 = 32; final norm 4
TOY_LINEAR, TOY_OTHER = 288, 116


def by_name(plan):
    return {c.name.split(" (")[0].split(",")[0]: c.bytes for c in plan.components}


def test_parameter_counts_by_hand():
    assert TOY.linear_parameters == TOY_LINEAR and TOY.other_parameters == TOY_OTHER
    assert TOY.num_parameters == 404
    assert TOY.lora_parameters(2, ("q_proj", "down_proj")) == 2 * 2 * ((4 + 4) + (8 + 4))
    assert TOY.kv_bytes_per_token(2) == 2 * 2 * 1 * 2 * 2
    untied = ModelShape("t", 4, 8, 2, 2, 1, 2, 10, tie_embeddings=True, attention_bias=False)
    assert untied.num_parameters == 288 + 40 + 2 * 8 + 4


def test_known_shapes_match_the_published_parameter_counts():
    # the models' published totals (safetensors metadata of the Hub repositories)
    assert KNOWN_SHAPES["Qwen2.5-7B"].num_parameters == 7_615_616_512
    assert KNOWN_SHAPES["Qwen2.5-0.5B"].num_parameters == 494_032_768
    assert KNOWN_SHAPES["SmolLM2-135M"].num_parameters == 134_515_008
    assert load_shape("Qwen/Qwen2.5-7B-Instruct") is KNOWN_SHAPES["Qwen2.5-7B"]


def inner_settings(**changes):
    base = dict(dtype="fp32", inner_lora_r=2, inner_target_modules=("q_proj", "down_proj"), slots=3,
                inner_max_tokens=5, inner_on_device=False)
    return PlanSettings(**{**base, **changes})


def test_inner_loop_memory_by_hand():
    plan = plan_memory(TOY, inner_settings())
    lora = 80
    # activations per token and layer: 4h + 4 x heads x head_dim + 4 x MLP + 2r per target = 16+16+32+8 = 72
    tokens = 3 * 5
    expected = {"inner copy": 404 * 4, "inner LoRA adapter r=2": lora * 4,
                "K=3 slots: adapters": 3 * lora * 16,  # fp32 weights, grads, two AdamW moments
                "inner activations": tokens * 2 * 72 * 4, "inner logits": 4 * tokens * 10 * 4}
    assert by_name(plan) == expected
    assert plan.peak_phase == "inner run"
    assert plan.peak_bytes == sum(expected.values())


def test_inner_variants_by_hand():
    one = by_name(plan_memory(TOY, inner_settings(slots=1)))
    assert one["K=1 slots: adapters"] == 80 * 12  # K=1 trains the adapter itself: grads and moments only
    checkpointed = by_name(plan_memory(TOY, inner_settings(inner_gradient_checkpointing=True)))
    assert checkpointed["inner activations"] == 15 * (2 * 4 + 72) * 4  # each layer's input, one layer again
    four_bit = by_name(plan_memory(TOY, inner_settings(qlora=True, dtype="bf16")))
    assert four_bit["inner copy"] == TOY_LINEAR * NF4_BYTES + TOY_OTHER * 2
    assert four_bit["inner activations"] == 15 * 2 * 72 * 2  # computed in bf16


def policy_settings(**changes):
    base = dict(gpus=4, zero=3, dtype="bf16", inner_lora_r=2, inner_target_modules=("q_proj", "down_proj"),
                slots=1, inner_max_tokens=5, prompt_tokens=3, completion_tokens=2, generation_batch=2, train_batch=1)
    return PlanSettings(**{**base, **changes})


@pytest.mark.parametrize("zero, weights, grads, optimizer", [
    (0, 404 * 2, 404 * 2, 404 * 12),  # DDP: nothing sharded
    (2, 404 * 2, 404 * 2 / 4, 404 * 12 / 4),  # gradients and optimizer state sharded
    (3, 404 * 2 / 4, 404 * 2 / 4, 404 * 12 / 4),  # weights too
])
def test_full_policy_sharding_by_hand(zero, weights, grads, optimizer):
    got = by_name(plan_memory(TOY, policy_settings(zero=zero)))
    assert got["policy weights"] == weights
    assert got["policy gradients"] == grads
    assert got["policy AdamW moments + fp32 master"] == optimizer  # 8 B of moments + a 4 B fp32 master
    assert ("ZeRO-3: the rest of the policy gathered whole" in got) == (zero == 3)


def test_whole_run_by_hand():
    plan = plan_memory(TOY, policy_settings())
    got = by_name(plan)
    assert got["ZeRO-3: the rest of the policy gathered whole"] == 404 * 2 * 3 / 4
    assert got["KV cache"] == 2 * 5 * 16
    # M-step: 1 row of 3 + 2 tokens x (4h + 4 x 4 + 4 x 8) x 2 B x 2 layers, + logits of the 2 completion tokens
    assert got["M-step activations"] == 5 * 2 * 64 * 2 + 4 * 2 * 10 * 4
    resident = 404 * 2 / 4 + 404 * 2 / 4 + 404 * 12 / 4 + 404 * 2 + 80 * 4
    inner_run = 80 * 12 + 5 * 2 * 72 * 2 + 4 * 5 * 10 * 4
    assert plan.phase_bytes("resident") == resident
    assert plan.phase_bytes("inner run") == inner_run
    assert plan.peak_bytes == resident + max(inner_run, 606 + 160, got["M-step activations"])


def test_lora_policy_and_vllm_by_hand():
    plan = plan_memory(TOY, policy_settings(policy_lora_r=1, policy_target_modules=("q_proj",), vllm=True,
                                            vllm_gpu_memory_utilization=0.5, device_memory_gib=2))
    got = by_name(plan)
    lora = 2 * 1 * (4 + 4)
    assert got["policy LoRA weights"] == lora * 4 / 4
    assert got["policy gradients"] == lora * 4 / 4 and got["policy AdamW moments"] == lora * 8 / 4
    assert got["vLLM"] == 1 * GIB and "KV cache" not in got  # vLLM holds its own cache inside its share
    assert plan.peak_bytes == plan.phase_bytes("resident") + plan.phase_bytes(plan.peak_phase) + GIB


def test_round_time_by_hand():
    r = RoundSettings(contexts=2, num_generations=3, reward_repeats=2, prompt_tokens=5, completion_tokens=4,
                      inner_epochs=3, probe_tokens=7, kept_per_context=1, m_step_epochs=2, gpus=2, device_flops=1000,
                      train_mfu=0.5, generate_mfu=0.1)
    phases = {p.name: (p.flops, p.seconds) for p in plan_round(TOY, r)}
    assert phases == {
        "generation": (2 * 404 * 6 * 9 / 2, 2 * 404 * 6 * 9 / 2 / 100),  # 6 self-edits of 5 + 4 tokens, at 10%
        "inner training": (6 * 404 * 12 * 3 * 4 / 2, 6 * 404 * 12 * 3 * 4 / 2 / 500),  # 12 runs x 3 epochs x 4
        "inner scoring": (2 * 404 * 12 * 2 * 7 / 2, 2 * 404 * 12 * 2 * 7 / 2 / 500),  # before and after
        "M-step": (6 * 404 * 2 * 9 * 2 / 2, 6 * 404 * 2 * 9 * 2 / 2 / 500),  # 2 kept x 9 tokens x 2 epochs
    }


@pytest.mark.parametrize("bad, field", [(dict(gpus=0), "gpus"), (dict(zero=4), "zero"), (dict(slots=0), "slots"),
                                        (dict(vllm_gpu_memory_utilization=1.5), "vllm_gpu_memory_utilization")])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        PlanSettings(**bad)


# ----- the command line ----------------------------------------------------------------------------------------
def test_plan_prints_memory_and_time(capsys):
    assert main(["plan", "--model", "Qwen2.5-7B", "--gpus", "8", "--zero", "3", "--qlora", "--slots", "4"]) == 0
    out = capsys.readouterr().out
    assert "ZeRO-3 shard 1/8" in out and "4-bit nf4" in out and "K=4 slots" in out and "peak = resident" in out
    assert "inner training" in out and "989 TFLOP/s" in out and "MFU 0.3" in out


def test_plan_reads_a_recipe_and_a_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 1000}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: {tmp_path}\ninner_batch_self_edits: 3\ninner_lora_r: 8\n"
                      "inner_max_seq_length: 77\nuse_peft: true\nlora_r: 4\n")
    assert main(["plan", "--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "K=3" in out and "inner LoRA r=8" in out and "77 tokens" in out and "LoRA r=4 policy" in out
    assert main(["plan", "--config", str(recipe), "--slots", "2"]) == 0  # a flag wins over the recipe
    assert "K=2" in capsys.readouterr().out
    bare = tmp_path / "bare.yaml"
    bare.write_text("task: arc\narc_max_tokens: 900\ninner_batch_self_edits: auto\n")
    assert main(["plan", "--config", str(bare)]) == 0
    out = capsys.readouterr().out  # no model: the embedded SmolLM2; ARC prompts at arc_max_tokens; auto at K=8
    assert out.startswith("SmolLM2-135M") and "prompts 900 tokens" in out and "K=8" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "Qwen2.5-7B", "--gpus", "0"], "--gpus: must be >= 1"),
    (["--model", "no-such-model"], "neither a model directory"),
    (["--model", "Qwen2.5-7B", "--zero", "1"], "--zero"),
    (["--model", "Qwen2.5-7B", "--inner-target-modules", "c_attn"], "not projections"),
    ([], "--model is missing"),
    (["--config", "/no/such.yaml"], "/no/such.yaml"),
])
def test_plan_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
