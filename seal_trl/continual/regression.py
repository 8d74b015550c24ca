"""The general regression suite the promotion gate checks: what a candidate must not break.

Two fixed measurements, shipped with the package (`seal_trl/data/regression_suite.json`, original text):
- `perplexity` of a held-out paragraph of everyday prose (lower is better);
- a small multiple-choice QA set of common knowledge: `qa_accuracy` (percent of questions whose correct
  choice has the highest mean token log-prob) and `qa_soft_accuracy` (the mean softmax weight of the correct
  choice, percent; continuous, so a small regression is visible before a question flips).
A user's own suite (`RegressionSuite.from_file`, `seal-trl adapt --regression-suite`) has the same JSON shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..inner.shared_prompt import shared_prompt_logprobs
from ..inner.tensors import encode_text, token_logprobs


#: A suite is a paragraph or a few pages and some questions; anything larger is not what this file is for.
MAX_SUITE_BYTES = 16 * 2**20


class RegressionSuiteError(ValueError):
    """A regression suite file that does not have the expected shape."""


@dataclass(frozen=True)
class RegressionSuite:
    """A held-out text and multiple-choice questions `(question, choices, index of the correct choice)`."""

    heldout_text: str
    qa: tuple[tuple[str, tuple[str, ...], int], ...]

    @classmethod
    def bundled(cls) -> RegressionSuite:
        text = resources.files("seal_trl.data").joinpath("regression_suite.json").read_text(encoding="utf-8")
        return cls.from_json(json.loads(text), source="bundled")

    @classmethod
    def from_file(cls, path: str | Path) -> RegressionSuite:
        """A suite from a JSON file `{"heldout_text": "...", "qa": [{"question", "choices", "answer"}, ...]}`,
        refused with one line that names the file and the field when it is anything else."""
        from ..safe_json import read_json_file

        data = read_json_file(path, max_bytes=MAX_SUITE_BYTES, error=RegressionSuiteError,
                              hint=" (a regression suite is a JSON object with `heldout_text` and `qa`)")
        return cls.from_json(data, source=str(path))

    @classmethod
    def from_json(cls, data: dict, *, source: str = "suite") -> RegressionSuite:
        if not isinstance(data, dict):
            raise RegressionSuiteError(f"{source}: a regression suite must be a JSON object with `heldout_text` and "
                                       f"`qa`, not a {type(data).__name__}")
        text = data.get("heldout_text")
        if not isinstance(text, str) or not text.strip():
            raise RegressionSuiteError(f"{source}: missing field `heldout_text`")
        items = data.get("qa") or []
        if not isinstance(items, list):
            raise RegressionSuiteError(f"{source}: field `qa` must be a list of question objects")
        qa = []
        for i, item in enumerate(items):
            item = item if isinstance(item, dict) else {}
            choices = item.get("choices")
            answer = item.get("answer")
            if (not isinstance(item.get("question"), str) or not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(choice, str) for choice in choices)
                    or isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices)):
                raise RegressionSuiteError(f"{source}: qa[{i}] needs `question`, `choices` (>= 2 strings) and "
                                           "`answer` (the index of the correct choice)")
            qa.append((item["question"], tuple(choices), answer))
        if not qa:
            raise RegressionSuiteError(f"{source}: field `qa` is empty")
        return cls(text.strip(), tuple(qa))

    def to_json(self) -> dict:
        """The file shape `from_json` reads."""
        return {"heldout_text": self.heldout_text,
                "qa": [{"question": q, "choices": list(choices), "answer": answer} for q, choices, answer in self.qa]}

    def check_measurable(self, tokenizer) -> None:
        """Refuse a held-out text too short to have a perplexity (under 2 tokens, every candidate would score 1.0
        and pass the regression objectives whatever it forgot)."""
        tokens = len(encode_text(tokenizer, self.heldout_text))
        if tokens < 2:
            raise RegressionSuiteError(f"the regression suite's `heldout_text` is {tokens} token(s) long; perplexity "
                                       "needs at least 2: give it a paragraph or more")

    def fingerprint(self) -> dict:
        """What a registry records about the suite a gate read: its size and a hash of its content."""
        content = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return {"sha256": hashlib.sha256(content).hexdigest()[:16], "qa": len(self.qa),
                "heldout_words": len(self.heldout_text.split())}


#: exp() of more overflows a float: a model that diverged this far scores an infinite perplexity (refused by the gate).
MAX_LOG_PERPLEXITY = 709.0


@torch.no_grad()
def perplexity(model, tokenizer, text: str, *, window: int = 512) -> float:
    """exp(mean next-token NLL) of `text`, in non-overlapping windows of `window` tokens."""
    ids = encode_text(tokenizer, text)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(ids), window):
        chunk = torch.tensor([ids[start:start + window]], device=device)
        if chunk.shape[1] < 2:
            continue
        logp, mask = token_logprobs(model(input_ids=chunk).logits, chunk)
        total -= float(logp.sum())
        count += int(mask.sum())
    mean_nll = total / max(count, 1)
    return math.inf if mean_nll > MAX_LOG_PERPLEXITY else math.exp(mean_nll)


@torch.no_grad()
def qa_scores(model, tokenizer, suite: RegressionSuite, *, max_rows: int = 64) -> tuple[float, float]:
    """(accuracy, soft accuracy) in percent on the suite's multiple-choice questions (each question's prompt
    encoded once for its choices)."""
    per_question = shared_prompt_logprobs(model, tokenizer, [f"Question: {q}\nAnswer:" for q, _, _ in suite.qa],
                                          [[" " + c for c in choices] for _, choices, _ in suite.qa], max_rows=max_rows)
    correct, soft = 0.0, 0.0
    for (_, _, answer), v in zip(suite.qa, per_question):
        correct += float(int(v.argmax()) == answer)
        soft += float(torch.softmax(v, 0)[answer])
    n = len(suite.qa)
    return 100.0 * correct / n, 100.0 * soft / n


def regression_scores(model, tokenizer, suite: RegressionSuite | None = None) -> dict[str, float]:
    """`perplexity`, `qa_accuracy` and `qa_soft_accuracy` of `model` as it is."""
    suite = suite or RegressionSuite.bundled()
    acc, soft = qa_scores(model, tokenizer, suite)
    return {"perplexity": perplexity(model, tokenizer, suite.heldout_text), "qa_accuracy": acc,
            "qa_soft_accuracy": soft}
