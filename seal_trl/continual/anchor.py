"""A KL anchor on general text: keep a fine-tune's next-token distributions close to a reference model's.

Replay of earlier documents protects what was learned from them, not the model's general behaviour: a LoRA
fine-tune on a few sentences also moves its predictions on everyday text (the gate's regression suite sees this
as a perplexity rise). The anchor adds `weight * KL(reference || current)`, averaged over the tokens of a few
general texts, to every training step. The reference distributions are computed once, from the model as it is
before the fine-tune (the promoted model). With no texts given, the model writes its own from generic prompts,
so the anchor needs no data; its prompts ask none of the bundled regression suite's questions (a test checks it:
the anchor holds its prompts' answers where they were, so a shared question would hold what the gate reads).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..generation import generate_text
from ..inner.tensors import encode_text

GENERIC_PROMPTS = (
    "Describe a walk through a small town on a spring morning.",
    "Explain how a bicycle's gears make climbing a hill easier.",
    "Give three tips for keeping a kitchen tidy.",
    "Write a short paragraph about why people keep diaries.",
    "Explain what a library does for the people who live near it.",
    "Describe how a letter travels from its sender to the person who reads it.",
    "How many strings does a standard guitar have?",
    "What is the tallest animal in the world?",
    "Which metal is most used in electrical wires?",
    "Which bird is often a symbol of peace?",
    "How many pieces does each player start with in chess?",
    "What is the main ingredient of guacamole?",
)


def check_anchor_texts(tokenizer, texts: Sequence[str]) -> None:
    """Refuse anchor texts none of which is 2 tokens long: the anchor compares next-token distributions, so such
    texts leave it nothing to hold (the learner would fail at its first step, after the model loaded)."""
    if not any(len(encode_text(tokenizer, t, add_special_tokens=False)) >= 2 for t in texts):
        raise ValueError(f"none of the {len(texts)} anchor text(s) is 2 tokens or longer (field `anchor_texts`): the "
                         "KL anchor needs general text, a sentence or more per paragraph")


class AnchorClash(ValueError):
    """An anchor text (or a default prompt) that asks one of the regression suite's questions."""

    def __init__(self, index: int, text: str, question: str, default_prompts: bool):
        self.index, self.text, self.question, self.default_prompts = index, text, question, default_prompts
        where = (f"the default anchor prompt {text!r}" if default_prompts
                 else f"anchor text {index + 1} (field `anchor_texts`)")
        fix = ("drop the question from the suite, give your own anchor texts, or set the anchor weight to 0"
               if default_prompts else "drop it from the anchor texts or from the suite")
        super().__init__(f"{where} asks the regression suite's question {question!r}: the anchor would hold the "
                         f"answer the gate reads for forgetting; {fix}")


def _words(text: str) -> str:
    """`text` as space-padded lower-case words, so containment means whole words in order: compatibility forms
    folded (full-width letters), invisible format characters (zero-width space, soft hyphen) dropped, punctuation
    read as a word break."""
    folded = "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")
    return " " + " ".join(re.findall(r"\w+", folded.casefold())) + " "


def check_anchor_apart(texts: Sequence[str] | None, questions: Sequence[str]) -> None:
    """Raise `AnchorClash` if an anchor text asks one of the regression suite's `questions` (texts None: the
    default prompts the model answers to write its own): the anchor holds the model's answer where it was, and the
    gate's QA check reads that answer for forgetting. Whole words in order, whatever the case, spacing or
    punctuation; questions under 3 words are too generic to match. A rewording is not caught."""
    default_prompts = texts is None
    texts = GENERIC_PROMPTS if texts is None else texts
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("anchor texts must be a list of strings (field `anchor_texts`)")
    if not all(isinstance(q, str) for q in questions):
        raise TypeError("the regression suite's questions must be strings")
    words = [_words(t) for t in texts]
    for question in questions:
        asked = _words(question)
        if len(asked.split()) < 3:
            continue
        for k, text in enumerate(words):
            if asked in text:
                raise AnchorClash(k, texts[k], question, default_prompts)


def write_anchor_texts(model, tokenizer, prompts: Sequence[str] = GENERIC_PROMPTS, *, max_new_tokens: int = 64
                       ) -> list[str]:
    """Each generic prompt followed by the model's own greedy answer (chat template when the tokenizer has one):
    everyday prose and short question answering, the general behaviour a fine-tune should leave alone."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = []
    for prompt in prompts:
        answer = generate_text(model, tokenizer, [{"role": "user", "content": prompt}] if chat else prompt,
                               max_new_tokens=max_new_tokens)
        texts.append(f"{prompt}\n{answer.strip()}".strip())
    return texts


class KLAnchor:
    """General texts and a reference model's next-token log-probabilities on them.

    `loss(model)` is the mean over anchor tokens of KL(reference || model), on one text per call in turn, so
    each training step pays one short extra forward and backward pass. The reference is kept whole: texts x
    tokens x vocabulary floats (12 texts of 64 tokens over SmolLM2's 49,152-token vocabulary: 150 MB in fp32).
    """

    def __init__(self, input_ids: list[torch.Tensor], reference: list[torch.Tensor]):
        if not input_ids:
            raise ValueError("KLAnchor needs at least one non-empty text")
        self.input_ids = input_ids
        self.reference = reference
        self._next = 0

    @classmethod
    @torch.no_grad()
    def from_model(cls, model, tokenizer, texts: Sequence[str], *, max_tokens: int = 64) -> KLAnchor:
        """Tokenise `texts` (each cut to `max_tokens`) and record `model`'s log-probabilities on them now."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        ids, refs = [], []
        for text in texts:
            row = torch.tensor([encode_text(tokenizer, text, add_special_tokens=False)[:max_tokens]], dtype=torch.long)
            if row.shape[1] < 2:
                continue
            row = row.to(device)
            logits = model(input_ids=row).logits[:, :-1].float()
            ids.append(row)
            refs.append(F.log_softmax(logits, dim=-1))
        model.train(was_training)
        return cls(ids, refs)

    @property
    def num_tokens(self) -> int:
        return sum(r.shape[1] for r in self.reference)

    def loss(self, model) -> torch.Tensor:
        """KL(reference || model) per token, averaged, on the next anchor text (round robin)."""
        i = self._next % len(self.input_ids)
        self._next += 1
        logits = model(input_ids=self.input_ids[i]).logits[:, :-1].float()
        return F.kl_div(F.log_softmax(logits, dim=-1), self.reference[i], log_target=True,
                        reduction="none").sum(-1).mean()
