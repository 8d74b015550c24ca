"""Packing the batches of several adapter slots into one row of tokens, with no padding.

Examples of different self-edits differ a lot in length (a passage of 150 tokens next to implications of 20),
so padding K of them to the longest wastes most of a step. Packed, every example keeps its own positions
(restarting at 0) and attention runs per example (`packed_attention`; on attention other than sdpa,
transformers' masks keep examples apart, reading the boundaries from the position ids), so each example computes
exactly what it would alone.
The first token of every example is unlabelled, so no example is trained to predict the next one's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .tensors import IGNORE_INDEX, EncodedExample


@dataclass(frozen=True)
class PackedBatch:
    """One packed row: token ids, positions and labels (1, T); the slot of each token (T,).

    `example_lengths`: the token count of each example in the row, in order (attention runs per example, see
    `packed_attention`). `pad_index` (G, L): the positions of each slot's tokens, padded with position 0 to the
    longest slot, in the order of `slots` (G,); `pad_valid` (G, L, 1): False at that padding. `unpad_index` (T,):
    where each token sits in that (G * L) layout. The LoRA layers use them to run all slots in one batched matmul
    where the grouped matmul over the row's per-slot spans (which needs none of them) does not run.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    token_slots: torch.Tensor
    slots: torch.Tensor
    pad_index: torch.Tensor
    pad_valid: torch.Tensor
    unpad_index: torch.Tensor
    tokens_per_slot: dict[int, int]
    example_lengths: tuple[int, ...]


def pack_slots(batches: Sequence[tuple[int, Sequence[EncodedExample]]], device: torch.device | str = "cpu"
               ) -> PackedBatch:
    """Pack `(slot, examples)` pairs, slots in the given order, into one row."""
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    token_slots: list[int] = []
    spans: list[tuple[int, int]] = []
    lengths: list[int] = []
    for slot, examples in batches:
        start = len(ids)
        for example in examples:
            n = len(example.input_ids)
            ids.extend(example.input_ids)
            positions.extend(range(n))
            labels.append(IGNORE_INDEX)
            labels.extend(example.labels[1:])
            token_slots.extend([slot] * n)
            lengths.append(n)
        spans.append((start, len(ids)))
    longest = max(end - start for start, end in spans)
    pad_index = torch.zeros((len(spans), longest), dtype=torch.long)
    pad_valid = torch.zeros((len(spans), longest, 1), dtype=torch.bool)
    unpad_index = torch.empty(len(ids), dtype=torch.long)
    for g, (start, end) in enumerate(spans):
        pad_index[g, : end - start] = torch.arange(start, end)
        pad_valid[g, : end - start] = True
        unpad_index[start:end] = g * longest + torch.arange(end - start)
    return PackedBatch(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        labels=torch.tensor([labels], device=device),
        token_slots=torch.tensor(token_slots, device=device),
        slots=torch.tensor([slot for slot, _ in batches], device=device),
        pad_index=pad_index.to(device),
        pad_valid=pad_valid.to(device),
        unpad_index=unpad_index.to(device),
        tokens_per_slot={slot: end - start for (slot, _), (start, end) in zip(batches, spans)},
        example_lengths=tuple(lengths),
    )
