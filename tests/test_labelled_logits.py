"""Logits only where a label is read: the same loss and scores as full logits, with the vocabulary projection
run on the labelled positions alone, and a fallback for models that cannot mask their logits."""

import pytest
import torch

from seal_trl.inner.graders import LogLikelihoodGrader
from seal_trl.inner.tensors import (IGNORE_INDEX, encode_example, labelled_logits, labelled_nll, masked_mean_nll,
                                    pad_right)


@pytest.fixture()
def batch(tiny_tokenizer):
    rows = [encode_example(tiny_tokenizer, "Question: What river runs through Ostrand?\nAnswer:", " Velmora",
                           loss_on_prompt=False, add_eos=True),
            encode_example(tiny_tokenizer, "", "The Quorn expedition left port in 1874.", loss_on_prompt=False,
                           add_eos=False)]
    return pad_right(rows, tiny_tokenizer.pad_token_id)


def test_same_loss_and_scores_as_full_logits(tiny_model, batch):
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    full = tiny_model(**inputs).logits
    kept = labelled_logits(tiny_model, batch["labels"], **inputs)
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert kept.shape == (labelled, full.shape[-1]) and labelled < batch["labels"].numel() - 2
    assert torch.allclose(labelled_nll(kept, batch["labels"]), masked_mean_nll(full, batch["labels"]), atol=1e-5)
    # answer log-probs per row: the grader's reading of the masked logits equals the full-logits computation
    logp = torch.log_softmax(full[:, :-1], -1).gather(-1, batch["labels"][:, 1:].clamp_min(0)[..., None])[..., 0]
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    expected = (logp * mask).sum(1) / mask.sum(1)
    assert torch.allclose(LogLikelihoodGrader.answer_logprobs(kept, batch["labels"]), expected, atol=1e-5)


def test_the_vocabulary_projection_sees_only_labelled_positions(tiny_model, batch):
    rows = []
    hook = tiny_model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        labelled_logits(tiny_model, batch["labels"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"])
    finally:
        hook.remove()
    assert rows == [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())]


def test_a_model_without_masked_logits_falls_back_to_full_logits(tiny_model, batch):
    class NoMasks(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):  # no logits_to_keep: a TypeError when it is passed
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    wrapped = NoMasks(tiny_model)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    kept = labelled_logits(wrapped, batch["labels"], **inputs)
    assert torch.allclose(kept, labelled_logits(tiny_model, batch["labels"], **inputs), atol=1e-5)
    assert wrapped._seal_masked_logits is False  # remembered: the next call goes straight to the fallback
    assert torch.allclose(labelled_logits(wrapped, batch["labels"], **inputs), kept)
