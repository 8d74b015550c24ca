"""Tokenising examples and padding them into batches, with loss masks (-100) where no loss belongs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels of one example; labels are IGNORE_INDEX where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


class TemplateText(str):
    """Text rendered by a chat template from content that holds no special-token text: its special tokens (such as
    `<|im_start|>`) are the template's own and tokenise as control tokens. Every other str is content."""


def encode_text(tokenizer, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`. Special-token text in content (`<|im_end|>` in a self-edit, a passage or an answer) is
    split into ordinary tokens, so content never writes an end-of-turn, EOS or padding token; only a
    `TemplateText`'s special tokens are parsed as such."""
    return tokenizer(text, add_special_tokens=add_special_tokens,
                     split_special_tokens=not isinstance(text, TemplateText))["input_ids"]


def encode_chat(tokenizer, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template: the template's own text with its special
    tokens parsed, each message's content with special-token text split (as `encode_text`). Each content is
    rendered as a unique placeholder that is then tokenised as content; a template that does not pass the
    placeholders through unchanged (once each) gets the whole rendering tokenised, when no content holds
    special-token text, and is refused otherwise."""
    marks = [f"SEALCONTENT{uuid.uuid4().hex}" for _ in messages]  # letters only: survives trim and escaping
    placeheld = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    rendered = tokenizer.apply_chat_template(placeheld, tokenize=False, add_generation_prompt=add_generation_prompt)
    pattern = "(" + "|".join(map(re.escape, marks)) + ")"
    pieces = re.split(pattern, rendered)
    if sorted(pieces[1::2]) != sorted(marks):
        specials = [t for t in tokenizer.all_special_tokens if any(t in str(m.get("content", "")) for m in messages)]
        if specials:
            raise ValueError(f"the chat template rewrites message content and the content holds the special token "
                             f"{specials[0]!r}: remove it from the text")
        text = TemplateText(tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                          add_generation_prompt=add_generation_prompt))
        return encode_text(tokenizer, text, add_special_tokens=False)
    content = {mark: str(m.get("content", "")) for m, mark in zip(messages, marks)}
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            ids += encode_text(tokenizer, content[piece], add_special_tokens=False)
        elif piece:
            ids += encode_text(tokenizer, TemplateText(piece), add_special_tokens=False)
    return ids


def encode_example(tokenizer, prompt: str, completion: str, *, loss_on_prompt: bool, add_eos: bool) -> EncodedExample:
    """Tokenise prompt and completion separately and join them (special tokens only at the start). Both are content
    (`encode_text`) unless the prompt is a `TemplateText`."""
    prompt_ids = encode_text(tokenizer, prompt, add_special_tokens=True) if prompt else []
    completion_ids = encode_text(tokenizer, completion, add_special_tokens=not prompt)
    if add_eos and tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    prompt_labels = list(prompt_ids) if loss_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    return EncodedExample(input_ids=list(prompt_ids) + completion_ids, labels=prompt_labels + completion_ids)


def pad_right(
    examples: Sequence[EncodedExample], pad_token_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Pad to the longest example in the batch (dynamic padding); padding gets label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def pad_left(sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"):
    """Left-pad prompts for batched generation; returns input_ids and attention_mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        if s:
            ids[row, width - len(s) :] = torch.tensor(list(s))
            mask[row, width - len(s) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `labels` under next-token `logits`, and the mask of scored positions.

    Shifts by one (position t predicts token t+1); positions labelled IGNORE_INDEX are masked out.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def next_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool, shaped like `labels`: True at position t when token t+1 carries a label, i.e. where a loss or a
    score reads the logits (the last position never does)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def labelled_logits(model, labels: torch.Tensor, **inputs) -> torch.Tensor:
    """The model's logits at the `next_token_mask(labels)` positions only, flattened row-major to (N, vocab)."""
    return forward_keeping(model, next_token_mask(labels), **inputs)[1]


def forward_keeping(model, keep: torch.Tensor, **inputs) -> tuple[Any, torch.Tensor]:
    """The model's output and its logits at the boolean `keep` positions only, flattened row-major to (N, vocab).

    The vocabulary projection runs on those N positions, not on all B x T (transformers' `logits_to_keep` with
    a boolean mask), so unlabelled prompt tokens and padding cost no vocabulary-wide logits or log-softmax. A
    model whose forward does not take such a mask gets the full logits, masked after (and is remembered as such:
    `model._seal_masked_logits`)."""
    if getattr(model, "_seal_masked_logits", True):
        try:
            out = model(**inputs, logits_to_keep=keep)
            if out.logits.dim() == 2 and out.logits.shape[0] == int(keep.sum()):
                return out, out.logits
        except torch.OutOfMemoryError:
            raise
        except (TypeError, IndexError, RuntimeError):  # this model or transformers version takes no such mask
            pass
        model._seal_masked_logits = False  # remembered: the fallback below from now on
    out = model(**inputs)
    return out, out.logits[keep]


def labelled_targets(labels: torch.Tensor) -> torch.Tensor:
    """The labelled next tokens, in the order of `labelled_logits`' rows."""
    return labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def labelled_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy from `labelled_logits(model, labels, ...)`: the same value as
    `masked_mean_nll` on the full logits."""
    return torch.nn.functional.cross_entropy(logits.float(), labelled_targets(labels))


def masked_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE_INDEX."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
