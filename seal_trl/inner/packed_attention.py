"""Attention over a packed row one example at a time.

A packed row holds the examples of K slots back to back. Given only restarting position ids, transformers keeps
them apart with a block-diagonal mask over the whole row, and sdpa then scores all (K*L)^2 query-key pairs, most
of them masked: on a CPU the profile of K=8 slots showed attention costing twice as much per self-edit as one
self-edit alone. Here the row is split at the example boundaries and each example runs causal sdpa on its own
(K*L^2 pairs), which computes the same attention, since no example may see another.

The split is used only inside `packed_examples(model, lengths)`, only for models running "sdpa" with plain causal
attention (no sliding window), and only for a single unmasked row of exactly those lengths; every other call goes
to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

#: The name the packed attention is registered under in transformers' attention and mask interfaces.
PACKED_SDPA = "seal_packed_sdpa"

_example_lengths: ContextVar[tuple[int, ...] | None] = ContextVar("seal_packed_example_lengths", default=None)


def _row_lengths(batch_size: int, tokens: int, attention_mask) -> tuple[int, ...] | None:
    """The active example lengths when this call is the packed row they describe, else None."""
    lengths = _example_lengths.get()
    if lengths is None or attention_mask is not None or batch_size != 1 or tokens != sum(lengths):
        return None
    return lengths


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, tokens, dim) in, (batch, tokens, heads, dim)
    out. Splits a packed row into its examples when `packed_examples` is active, else defers to sdpa."""
    lengths = _row_lengths(query.shape[0], query.shape[2], attention_mask)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=q.shape[2] > 1, scale=scaling,
                                     enable_gqa=gqa)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def packed_sdpa_mask(batch_size: int, q_length: int, kv_length: int, **kwargs) -> torch.Tensor | None:
    """No mask for the packed row while it is split by example (each part is plainly causal); sdpa's mask for
    every other call."""
    if kv_length == q_length and _row_lengths(batch_size, q_length, kwargs.get("attention_mask")) is not None:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def _plain_causal(config) -> bool:
    """Whether every layer attends causally over the whole sequence (no sliding window, no local layers), which
    is what the per-example split computes."""
    layer_types = getattr(config, "layer_types", None) or ()
    return not getattr(config, "sliding_window", None) and all(kind == "full_attention" for kind in layer_types)


@contextmanager
def packed_examples(model: torch.nn.Module, lengths: Sequence[int]) -> Iterator[bool]:
    """While active, a forward pass of `model` over one packed row whose examples have token counts `lengths`
    (in order) runs attention per example. Yields whether it applies: only a model on "sdpa" with plain causal
    attention is switched (eager, flash-attention and sliding-window models are left as they are, their masks keep
    the examples apart); the model's setting is restored on exit."""
    config = model.config
    if config._attn_implementation != "sdpa" or not _plain_causal(config):
        yield False
        return
    token = _example_lengths.set(tuple(int(n) for n in lengths))
    config._attn_implementation = PACKED_SDPA
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
        _example_lengths.reset(token)
