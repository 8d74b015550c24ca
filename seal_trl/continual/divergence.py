"""How far a candidate moved from the promoted model on the new document's own inputs: mean per-token forward KL.

RL's Razor (arXiv 2509.04259) finds that forgetting tracks the forward KL(reference || fine-tuned) measured on the
new task's inputs; STABLE (arXiv 2510.16089) gates merges on such a KL. Here the inputs are the texts the candidate
was trained on for the new document (its self-edit lines and passage, not replay) and the reference is the promoted
model: the same model with the candidate adapter switched off.

The reference is computed text by text beside the candidate's forward pass, so at most one text's logits (tokens x
vocabulary, twice) are held at a time: keeping every text's reference distribution would cost tokens x vocabulary
floats (about 200 MB for a thousand tokens of SmolLM2's 49,152-token vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

from ..inner.tensors import encode_text


@torch.no_grad()
def mean_token_kl(model, tokenizer, texts: Sequence[str], reference: Callable[[], AbstractContextManager],
                  *, chunk: int = 128) -> float:
    """Mean over every predicted token of `texts` of KL(reference || model), in nats.

    Each text is tokenised as a training example is (`encode_text`, special tokens included); inside
    `reference()` the model computes the reference distribution. The vocabulary-wide softmaxes are taken `chunk`
    positions at a time, in float64. Raises ValueError when no text has two tokens (nothing is predicted)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for text in texts:
        ids = encode_text(tokenizer, text)
        if len(ids) < 2:
            continue
        row = torch.tensor([ids], dtype=torch.long, device=device)
        with reference():
            ref = model(input_ids=row).logits[0, :-1]
        cand = model(input_ids=row).logits[0, :-1]
        for start in range(0, ref.shape[0], chunk):
            # float64: a slightly scaled candidate's KL is small, and float32 rounding is of its order
            p = F.log_softmax(ref[start:start + chunk].double(), dim=-1)
            q = F.log_softmax(cand[start:start + chunk].double(), dim=-1)
            total += float(F.kl_div(q, p, log_target=True, reduction="sum"))
        count += ref.shape[0]
    if count == 0:
        raise ValueError(f"mean_token_kl: none of the {len(texts)} text(s) has two tokens; nothing to measure")
    return max(total / count, 0.0)  # KL >= 0; rounding can leave a near-identical pair a hair below
