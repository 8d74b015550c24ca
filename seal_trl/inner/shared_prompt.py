"""Scoring several completions of one prompt with the prompt encoded once.

A multiple-choice probe ranks about ten candidate answers after each question. Scored as separate rows, every
candidate re-encodes the whole prompt (a topic line and a question: most of each row's tokens). Here each prompt
is run once, its key/value cache is copied to one row per candidate, and only the candidates' own tokens go
through the model again. The token ids are exactly those of `encode_example(prompt, " answer")`, so the scores
match `completion_logprobs` up to floating-point rounding.

Only prompts of the same token length share a forward pass: with no padding inside the prompt batch, a position in
the cache is the token's true position, which sliding-window, chunked and ALiBi attention read from the cache index.
Caches that hold anything but plain keys and values (recurrent SSM state, quantized layers) are not copied: such
models are scored row by row, as are models whose forward returns no cache. Rotary embeddings that change with
the sequence length (longrope, dynamic NTK) use the lengths of the pass a token runs in, as cached generation does:
a row that crosses the original context length can differ from row-by-row scoring by about 1e-3 (a tiny Phi-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .graders import _device_of, _pad_id, completion_logprobs
from .tensors import encode_example, encode_text, forward_keeping


@torch.no_grad()
def shared_prompt_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[Sequence[str]], *,
                           max_rows: int = 64) -> list[torch.Tensor]:
    """For each prompt, the mean token log-prob of each of its completions under `model` as it is (one tensor per
    prompt, in the order given; empty for a prompt with no completions). Prompts of one token length are batched so
    that a forward pass holds at most `max_rows` completions (a prompt with more goes alone). Models without a plain
    key/value cache are scored row by row instead."""
    if len(prompts) != len(completions):
        raise ValueError(f"shared_prompt_logprobs: {len(prompts)} prompts but {len(completions)} completion lists")
    if not prompts:
        return []
    if any(not p for p in prompts) or getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return _row_by_row(model, tokenizer, prompts, completions)
    prompt_ids = [encode_text(tokenizer, p, add_special_tokens=True) for p in prompts]
    completion_ids = [[encode_text(tokenizer, c, add_special_tokens=False) for c in cs] for cs in completions]
    if any(not ids for cs in completion_ids for ids in cs):
        raise ValueError("shared_prompt_logprobs: a completion encodes to no tokens; give every candidate some text")
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    masked_logits = model.__dict__.get("_seal_masked_logits")
    for group in _groups([len(p) for p in prompt_ids], [len(cs) for cs in completions], max_rows):
        scored = _score_group(model, tokenizer, [prompt_ids[i] for i in group], [completion_ids[i] for i in group])
        if scored is None:  # no usable cache from this model: the plain path, once, for everything
            _restore_flag(model, masked_logits)
            return _row_by_row(model, tokenizer, prompts, completions)
        for i, values in zip(group, scored):
            out[i] = values
    return out


def _groups(lengths: Sequence[int], sizes: Sequence[int], max_rows: int) -> list[list[int]]:
    """Indices of prompts with completions, by prompt length, each group at most `max_rows` completions."""
    by_length: dict[int, list[int]] = {}
    for i, (length, n) in enumerate(zip(lengths, sizes)):
        if n:
            by_length.setdefault(length, []).append(i)
    groups: list[list[int]] = []
    for indices in by_length.values():
        rows = max_rows + 1
        for i in indices:
            if rows + sizes[i] > max_rows:
                groups.append([])
                rows = 0
            groups[-1].append(i)
            rows += sizes[i]
    return groups


def _restore_flag(model, value: bool | None) -> None:
    """Undo `forward_keeping`'s mark when the try that set it was ours (a cache we could not use, not the mask)."""
    if value is None:
        model.__dict__.pop("_seal_masked_logits", None)
    else:
        model._seal_masked_logits = value


def _plain_key_value(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _score_group(model, tokenizer, prompt_ids: list[list[int]], completion_ids: list[list[list[int]]]
                 ) -> list[torch.Tensor] | None:
    device, pad = _device_of(model), _pad_id(tokenizer)
    lengths = torch.tensor([len(p) for p in prompt_ids])
    ids, mask = _right_padded(prompt_ids, pad)
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[torch.arange(len(prompt_ids)), lengths - 1] = True
    try:
        prompt_out, first_logits = forward_keeping(model, last.to(device), input_ids=ids.to(device),
                                                   attention_mask=mask.to(device), use_cache=True)
    except TypeError:  # a forward that takes no `use_cache`
        return None
    cache = getattr(prompt_out, "cache", None)
    if cache is None or not hasattr(cache, "batch_select_indices") or not _plain_key_value(cache):
        return None
    first = torch.log_softmax(first_logits.float(), -1)  # row r: what follows prompt r
    del prompt_out

    owner = torch.tensor([i for i, cs in enumerate(completion_ids) for _ in cs])
    cids, cmask = _right_padded([c for cs in completion_ids for c in cs], pad)
    cache.batch_select_indices(owner.to(device))
    positions = lengths[owner][:, None] + torch.arange(cids.shape[1])[None, :]
    # token 0 of a completion is predicted by its prompt's last position, token t > 0 by the completion's t-1
    keep = torch.zeros_like(cmask, dtype=torch.bool)
    keep[:, :-1] = cmask[:, 1:].bool()
    masked_before = getattr(model, "_seal_masked_logits", True)
    _, logits = forward_keeping(model, keep.to(device), input_ids=cids.to(device),
                                attention_mask=torch.cat([mask[owner], cmask], 1).to(device),
                                position_ids=positions.to(device), cache=cache, use_cache=True)
    if getattr(model, "_seal_masked_logits", True) != masked_before:  # a failed try may have extended the cache
        return None
    rest = torch.log_softmax(logits.float(), -1).gather(-1, cids[:, 1:][cmask[:, 1:].bool()].to(device)[:, None])
    sums = first[owner.to(device)].gather(-1, cids[:, :1].to(device))[:, 0].cpu()
    sums = sums.index_add(0, keep.nonzero()[:, 0], rest[:, 0].cpu())
    means = sums / cmask.sum(1)
    return [means[owner == i] for i in range(len(prompt_ids))]


def _right_padded(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.tensor(list(s))
        mask[r, : len(s)] = 1
    return ids, mask


def _row_by_row(model, tokenizer, prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    rows = [encode_example(tokenizer, p, c, loss_on_prompt=False, add_eos=False) for p, cs in zip(prompts, completions)
            for c in cs]
    values = completion_logprobs(model, tokenizer, rows)
    out, k = [], 0
    for cs in completions:
        out.append(values[k : k + len(cs)])
        k += len(cs)
    return out
