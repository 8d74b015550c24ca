"""GPU paths: the bf16 inner loop, the 4-bit (QLoRA) inner loop and the grouped-matmul bf16 batched engine on CUDA.

Marked `gpu` and skipped, with that reason, where torch sees no CUDA device (this machine, CI). They run in
`benchmarks/gpu_check.sh` on a GPU box.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")]


def _jobs():
    from test_batched_inner_loop import mixed_jobs

    return mixed_jobs()


def _loop(model_dir, tokenizer, dtype, **overrides):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cuda")
    return InnerLoop(model, tokenizer, InnerLoopConfig(lora_r=8, lora_alpha=16, **overrides))


def test_bf16_inner_loop_agrees_with_fp32(tiny_model_dir, tiny_tokenizer):
    fp32 = _loop(tiny_model_dir, tiny_tokenizer, torch.float32).run_many(_jobs())
    bf16_loop = _loop(tiny_model_dir, tiny_tokenizer, torch.bfloat16)
    assert next(bf16_loop.model.parameters()).device.type == "cuda"
    bf16 = bf16_loop.run_many(_jobs())
    for a, b in zip(fp32, bf16, strict=True):
        assert a.ok and b.ok, (a.error_message, b.error_message)
        assert b.reward == pytest.approx(a.reward, abs=0.05 + 0.05 * abs(a.reward))  # bf16 rounding, same sign
        assert (a.reward > 0) == (b.reward > 0)


def test_four_bit_inner_loop_on_cuda(tiny_model_dir):
    loop = InnerLoop.from_pretrained(str(tiny_model_dir), InnerLoopConfig(lora_r=8, lora_alpha=16, load_in_4bit=True))
    layers = [m for m in loop.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and all(m.weight.device.type == "cuda" for m in layers)
    results = loop.run_many(_jobs())
    assert all(r.ok for r in results), [r.error_message for r in results]
    assert sum(r.reward > 0 for r in results) >= 3  # training on the answers helps most plans


def test_grouped_mm_bf16_batched_equals_sequential(tiny_model_dir, tiny_tokenizer):
    sequential = _loop(tiny_model_dir, tiny_tokenizer, torch.bfloat16).run_many(_jobs())
    loop = _loop(tiny_model_dir, tiny_tokenizer, torch.bfloat16, batch_self_edits=4)
    together = loop.run_many(_jobs())
    assert loop._batched.slots.grouped  # the grouped kernel ran, not the gather fallback
    for one, many in zip(sequential, together, strict=True):
        assert one.ok and many.ok and one.steps == many.steps
        assert many.reward == pytest.approx(one.reward, abs=0.05 + 0.05 * abs(one.reward))


@pytest.mark.parametrize("four_bit", [False, True])
def test_shared_prompt_scoring_on_cuda(tiny_model_dir, tiny_tokenizer, four_bit):
    from test_shared_prompt import COMPLETIONS, PROMPTS, _reference
    from transformers import BitsAndBytesConfig

    from seal_trl.inner.shared_prompt import shared_prompt_logprobs

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16) if four_bit else None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, quantization_config=quant,
                                                 device_map={"": 0}).eval()
    got = shared_prompt_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS, max_rows=4)
    for g, w in zip(got, _reference(model, tiny_tokenizer, PROMPTS, COMPLETIONS), strict=True):
        torch.testing.assert_close(g, w, atol=0.05, rtol=0.02)  # bf16 rounding: the cache path sums in another order
