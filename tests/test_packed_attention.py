"""Attention per example over a packed row: the same outputs and gradients as each example alone, and really split."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import packed_attention
from seal_trl.inner.packed_attention import PACKED_SDPA, packed_examples
from seal_trl.inner.packing import pack_slots
from seal_trl.inner.tensors import encode_example
from seal_trl.testing import build_tiny_model

TEXTS = ["The river Velmora runs through Ostrand.", "Mara Vell built the tower.", "x y z", "Q"]


@pytest.fixture(params=["qwen2", "llama"])
def model(request, tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, architecture=request.param)
    assert model.config._attn_implementation == "sdpa"
    return model


def packed_row(tokenizer):
    examples = [encode_example(tokenizer, "", t, loss_on_prompt=True, add_eos=False) for t in TEXTS]
    return examples, pack_slots([(0, examples[:2]), (1, examples[2:])])


def record_sdpa_lengths(monkeypatch) -> list[int]:
    """The query length of every sdpa call the packed attention makes."""
    calls = []
    original = packed_attention.scaled_dot_product_attention

    def recording(q, *args, **kwargs):
        calls.append(q.shape[2])
        return original(q, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "scaled_dot_product_attention", recording)
    return calls


def test_pack_slots_records_each_example_length(tiny_tokenizer):
    examples, packed = packed_row(tiny_tokenizer)
    assert packed.example_lengths == tuple(len(e.input_ids) for e in examples)
    assert sum(packed.example_lengths) == packed.input_ids.shape[1]


def test_split_row_matches_each_example_alone_with_gradients(model, tiny_tokenizer, monkeypatch):
    examples, packed = packed_row(tiny_tokenizer)
    calls = record_sdpa_lengths(monkeypatch)
    with packed_examples(model, packed.example_lengths) as applied:
        together = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
    assert applied
    # every layer ran attention once per example, each over that example's tokens only
    assert calls == list(packed.example_lengths) * model.config.num_hidden_layers
    weights = torch.randn_like(together)
    (together * weights).sum().backward()
    grads_together = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    start, total = 0, 0.0
    for e in examples:
        n = len(e.input_ids)
        alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
        assert torch.allclose(together[start : start + n], alone, atol=1e-5)
        total = total + (alone * weights[start : start + n]).sum()
        start += n
    total.backward()
    for p, g in zip(model.parameters(), grads_together):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-4), (p.grad - g).abs().max()


def test_setting_restored_and_nothing_split_outside_the_context(model, tiny_tokenizer, monkeypatch):
    _, packed = packed_row(tiny_tokenizer)
    calls = record_sdpa_lengths(monkeypatch)
    with packed_examples(model, packed.example_lengths):
        assert model.config._attn_implementation == PACKED_SDPA
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
    assert calls == []


@pytest.mark.parametrize("ids,mask,lengths", [
    ([[5, 6, 7, 8], [9, 10, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]], [4, 4]),  # two rows
    ([[0, 5, 6, 7]], [[0, 1, 1, 1]], [4]),  # one left-padded row of the active length
])
def test_masked_batches_inside_the_context_use_the_mask(model, monkeypatch, ids, mask, lengths):
    """A call that is not the packed row (a padded, masked batch) goes to transformers' sdpa unchanged."""
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        calls = record_sdpa_lengths(monkeypatch)
        with packed_examples(model, lengths):
            got = model(input_ids=ids, attention_mask=mask).logits
    assert calls == []
    assert torch.allclose(got, expected, atol=1e-6)


def test_models_not_on_sdpa_are_left_alone(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    with packed_examples(model, [3, 2]) as applied:
        assert not applied and model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


def test_sliding_window_models_are_left_alone(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    model.config.sliding_window = 8  # the split would attend past the window
    with packed_examples(model, [3, 2]) as applied:
        assert not applied and model.config._attn_implementation == "sdpa"
