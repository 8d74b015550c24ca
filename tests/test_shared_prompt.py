"""The shared-prompt scorer gives the scores of scoring each (prompt, completion) row on its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from seal_trl.inner.graders import completion_logprobs
from seal_trl.inner.shared_prompt import shared_prompt_logprobs
from seal_trl.inner.tensors import encode_example

PROMPTS = ["Topic: Pellucara\nQuestion: Who founded the harbour town of Pellucara?\nAnswer:", "Q: x?\nA:",
           "Topic: A\nQuestion: When did it open?\nAnswer:"]
COMPLETIONS = [[" Marta Vell", " 1820", " the river", " Osk"], [" yes", " a much longer candidate answer than the rest"],
               [" 12"]]


def _reference(model, tokenizer, prompts, completions):
    rows = [encode_example(tokenizer, p, c, loss_on_prompt=False, add_eos=False)
            for p, cs in zip(prompts, completions) for c in cs]
    values = completion_logprobs(model, tokenizer, rows, batch_size=1)  # batch 1: no padding at all
    return list(torch.split(values, [len(cs) for cs in completions]))


@pytest.mark.parametrize("max_rows", [1, 5, 64])
def test_matches_scoring_each_row_alone(tiny_model, tiny_tokenizer, max_rows):
    got = shared_prompt_logprobs(tiny_model.eval(), tiny_tokenizer, PROMPTS, COMPLETIONS, max_rows=max_rows)
    want = _reference(tiny_model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_llama_and_a_lora_adapter(tiny_llama_dir, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    got = shared_prompt_logprobs(model, tokenizer, PROMPTS, COMPLETIONS, max_rows=4)
    for g, w in zip(got, _reference(model, tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_each_prompt_is_encoded_once_with_prompts_of_its_length(tiny_model, tiny_tokenizer):
    prompts = ["Q: dog?\nA:", "Q: sun?\nA:", PROMPTS[0]]
    lengths = [len(tiny_tokenizer(p)["input_ids"]) for p in prompts]
    assert lengths[0] == lengths[1] != lengths[2]
    completions = [[" yes", " no"], [" a longer answer"], [" Osk"]]
    seen = []
    hook = tiny_model.model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                                      with_kwargs=True)
    try:
        got = shared_prompt_logprobs(tiny_model.eval(), tiny_tokenizer, prompts, completions, max_rows=64)
    finally:
        hook.remove()
    width = max(len(tiny_tokenizer(c)["input_ids"]) for c in completions[0] + completions[1])
    assert seen == [(2, lengths[0]), (3, width), (1, lengths[2]), (1, len(tiny_tokenizer(" Osk")["input_ids"]))]
    for g, w in zip(got, _reference(tiny_model, tiny_tokenizer, prompts, completions)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def _from_config(config_class, tokenizer, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return AutoModelForCausalLM.from_config(config_class(**{**base, **overrides})).eval()


def test_a_sliding_window_shorter_than_the_prompts(tiny_tokenizer):
    """Sliding-window attention reads positions from the cache index: a shorter prompt padded beside a longer one
    would see other tokens through its window than when scored alone."""
    from transformers import MistralConfig

    model = _from_config(MistralConfig, tiny_tokenizer, sliding_window=8)
    got = shared_prompt_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    for g, w in zip(got, _reference(model, tiny_tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_recurrent_state_model_is_scored_row_by_row(tiny_tokenizer):
    from transformers import MambaConfig

    model = _from_config(MambaConfig, tiny_tokenizer, state_size=8)
    got = shared_prompt_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    for g, w in zip(got, _reference(model, tiny_tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_prompt_without_completions_scores_nothing(tiny_model, tiny_tokenizer):
    got = shared_prompt_logprobs(tiny_model.eval(), tiny_tokenizer, PROMPTS, [[], COMPLETIONS[1], []], max_rows=1)
    assert [g.shape[0] for g in got] == [0, len(COMPLETIONS[1]), 0]


class _NoUseCache(torch.nn.Module):
    """A causal LM whose forward takes a logits mask but no `use_cache`."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


def test_a_forward_without_use_cache_keeps_its_logits_mask(tiny_model, tiny_tokenizer):
    model = _NoUseCache(tiny_model.eval())
    got = shared_prompt_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    for g, w in zip(got, _reference(tiny_model, tiny_tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert "_seal_masked_logits" not in model.__dict__  # its mask works: only our use_cache failed


class _NoCache(torch.nn.Module):
    """A causal LM that returns logits and no key/value cache."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **kwargs):
        return SimpleNamespace(logits=self.inner(**kwargs).logits)


def test_a_model_without_a_cache_is_scored_row_by_row(tiny_model, tiny_tokenizer):
    model = _NoCache(tiny_model.eval())
    got = shared_prompt_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    for g, w in zip(got, _reference(tiny_model, tiny_tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_mismatched_lengths_are_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 completion lists"):
        shared_prompt_logprobs(tiny_model, tiny_tokenizer, PROMPTS[:2], COMPLETIONS[:1])


def test_a_model_that_takes_no_logits_mask(tiny_model, tiny_tokenizer):
    tiny_model.eval()._seal_masked_logits = False  # as `forward_keeping` marks such a model
    got = shared_prompt_logprobs(tiny_model, tiny_tokenizer, PROMPTS, COMPLETIONS, max_rows=3)
    for g, w in zip(got, _reference(tiny_model, tiny_tokenizer, PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
