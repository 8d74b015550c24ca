"""Graders: how well a (possibly adapted) model answers a probe. Higher is better.

- `LogLikelihoodGrader`: mean token log-prob of the gold answer after the probe prompt. Cheap, continuous,
  deterministic: one batched forward pass, no generation.
- `AnswerMatchGrader`: greedy answers scored by SQuAD exact match or token F1.
- `JudgeGrader`: greedy answers judged yes/no against the gold answer by a local HF model.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from importlib import import_module
from typing import Literal, Protocol, runtime_checkable

import torch

from ..probes import Probe
from .tensors import (EncodedExample, encode_chat, encode_example, encode_text, labelled_logits, labelled_targets,
                      next_token_mask, pad_left, pad_right)


@runtime_checkable
class Grader(Protocol):
    """Scores a model on a probe; the model is used as it is (adapters and all)."""

    name: str

    def score(self, model, tokenizer, probe: Probe) -> float: ...


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class LogLikelihoodGrader:
    """Mean over questions of the mean token log-prob of the best gold answer (a value <= 0)."""

    name = "loglik"

    def __init__(self, batch_size: int = 16):
        self.batch_size = batch_size

    @staticmethod
    def answer_examples(tokenizer, probe: Probe) -> tuple[list[EncodedExample], list[int]]:
        """Every (question prompt, gold answer) sequence, loss on the answer, and the question each belongs to."""
        encoded: list[EncodedExample] = []
        owner: list[int] = []
        for i, item in enumerate(probe.items):
            for answer in item.answers:
                encoded.append(
                    encode_example(tokenizer, item.prompt, " " + answer.strip(), loss_on_prompt=False, add_eos=False)
                )
                owner.append(i)
        return encoded, owner

    @staticmethod
    def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token log-prob of each row's answer tokens, from `labelled_logits(model, labels, ...)`."""
        keep = next_token_mask(labels)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labelled_targets(labels)[:, None]).squeeze(-1)
        sums = torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device).index_add(
            0, keep.nonzero()[:, 0], logp)
        return (sums / keep.sum(-1).clamp_min(1)).float().cpu()

    @staticmethod
    def best_per_question(per_answer: torch.Tensor, owner: Sequence[int], num_questions: int) -> float:
        """The mean over questions of the best gold answer's score."""
        best = torch.full((num_questions,), float("-inf"))
        for k, i in enumerate(owner):
            best[i] = torch.maximum(best[i], per_answer[k])
        return float(best.mean())

    @torch.no_grad()
    def score(self, model, tokenizer, probe: Probe) -> float:
        encoded, owner = self.answer_examples(tokenizer, probe)
        per_answer = completion_logprobs(model, tokenizer, encoded, batch_size=self.batch_size)
        return self.best_per_question(per_answer, owner, len(probe.items))


@torch.no_grad()
def completion_logprobs(model, tokenizer, rows: Sequence[EncodedExample], *, batch_size: int = 16) -> torch.Tensor:
    """Mean token log-prob of each row's labelled tokens under `model` as it is, in the order of `rows`.

    Rows of similar length share a forward pass (less padding)."""
    order = sorted(range(len(rows)), key=lambda k: len(rows[k].input_ids))
    values = torch.empty(len(rows))
    device = _device_of(model)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_right([rows[k] for k in chunk], _pad_id(tokenizer), device)
        logits = labelled_logits(model, batch["labels"], input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"])
        values[chunk] = LogLikelihoodGrader.answer_logprobs(logits, batch["labels"])
    return values


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of `prompts`, cut at the first newline (answers are one line)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        stop_strings=["\n"],
    )
    device = _device_of(model)
    encoded = [encode_text(tokenizer, p) for p in prompts]
    answers = [""] * len(prompts)
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_left([encoded[k] for k in chunk], _pad_id(tokenizer), device)
        out = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        for k, row in zip(chunk, new_tokens):
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers[k] = text.strip().split("\n")[0].strip()
    return answers


class AnswerMatchGrader:
    """Greedy answers scored against the gold answers by SQuAD exact match or token F1 (best gold)."""

    def __init__(self, metric: Literal["exact_match", "f1"] = "f1", max_new_tokens: int = 32, batch_size: int = 16):
        if metric not in ("exact_match", "f1"):
            raise ValueError(f"metric must be 'exact_match' or 'f1', got {metric!r}")
        self.metric = metric
        self.name = metric
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_predictions: list[str] = []

    def score(self, model, tokenizer, probe: Probe) -> float:
        fn = exact_match if self.metric == "exact_match" else token_f1
        predictions = greedy_answers(
            model, tokenizer, [i.prompt for i in probe.items], max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        self.last_predictions = predictions
        scores = [max(fn(p, g) for g in item.answers) for p, item in zip(predictions, probe.items)]
        return sum(scores) / len(scores)


JUDGE_TEMPLATE = (
    "You are grading an answer to a question.\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {prediction}\n"
    "Does the student answer mean the same as the gold answer? Reply yes or no."
)


class JudgeGrader:
    """An LLM judge on a local HF model: the share of greedy answers it calls equivalent to the gold one.

    The verdict is the comparison of the judge's next-token probability of "yes" and "no" after the
    question, so it is deterministic and needs no sampling.
    """

    name = "judge"

    def __init__(self, judge_model, judge_tokenizer, *, max_new_tokens: int = 32, batch_size: int = 8):
        self.judge_model = judge_model
        self.judge_tokenizer = judge_tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._yes = self._first_tokens(["yes", "Yes", " yes", " Yes"])
        self._no = self._first_tokens(["no", "No", " no", " No"])
        self.last_predictions: list[str] = []

    def _first_tokens(self, words: list[str]) -> list[int]:
        ids = {self.judge_tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words}
        return sorted(ids)

    def _judge_ids(self, question: str, gold: str, prediction: str) -> list[int]:
        """The judge's prompt as token ids; the question, gold and prediction are content (`encode_text`)."""
        text = JUDGE_TEMPLATE.format(question=question, gold=gold, prediction=prediction or "(no answer)")
        if getattr(self.judge_tokenizer, "chat_template", None):
            return encode_chat(self.judge_tokenizer, [{"role": "user", "content": text}])
        return encode_text(self.judge_tokenizer, text + "\nAnswer:", add_special_tokens=False)

    @torch.no_grad()
    def verdicts(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        """True where the judge prefers "yes" over "no"."""
        encoded = [self._judge_ids(q, g, p) for q, g, p in zip(questions, golds, predictions)]
        device = _device_of(self.judge_model)
        out: list[bool] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = pad_left(encoded[start : start + self.batch_size], _pad_id(self.judge_tokenizer), device)
            logits = self.judge_model(**batch).logits[:, -1].float()
            yes = torch.logsumexp(logits[:, self._yes], dim=-1)
            no = torch.logsumexp(logits[:, self._no], dim=-1)
            out.extend((yes > no).tolist())
        return out

    def score(self, model, tokenizer, probe: Probe) -> float:
        predictions = greedy_answers(
            model, tokenizer, [i.prompt for i in probe.items], max_new_tokens=self.max_new_tokens
        )
        self.last_predictions = predictions
        questions = [item.question or item.prompt for item in probe.items]
        golds = [" / ".join(item.answers) for item in probe.items]
        verdicts = self.verdicts(questions, golds, predictions)
        return sum(verdicts) / len(verdicts)


GRADER_NAMES = ("loglik", "exact_match", "f1", "judge", "arc")
# Graders that belong to a task live with the task (which imports the inner loop, not the other way round);
# they are loaded by name when first asked for.
TASK_GRADERS = {"arc": "seal_trl.tasks.arc.grader:ArcGrader"}


def make_grader(name: str, *, max_new_tokens: int = 32, judge=None) -> Grader:
    """A grader by name. `judge` is a `(model, tokenizer)` pair, required for "judge"."""
    if name == "loglik":
        return LogLikelihoodGrader()
    if name in ("exact_match", "f1"):
        return AnswerMatchGrader(name, max_new_tokens=max_new_tokens)
    if name == "judge":
        if judge is None:
            raise ValueError("grader='judge' needs a judge model: pass judge=(model, tokenizer)")
        return JudgeGrader(*judge, max_new_tokens=max_new_tokens)
    if name in TASK_GRADERS:
        module, attr = TASK_GRADERS[name].split(":")
        return getattr(import_module(module), attr)(max_new_tokens=max_new_tokens)
    raise ValueError(f"unknown grader {name!r}; choose one of {GRADER_NAMES}")
