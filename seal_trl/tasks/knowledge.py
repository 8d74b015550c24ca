"""Knowledge incorporation: adapt to a passage so that questions about it can be answered without it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..plans import SelfEditError, TrainingPlan, self_edit_lines
from ..probes import Probe, knowledge_probe
from .base import Prompt
from .squad import DatasetFormatError

#: The self-edit instructions (DESIGN.md section 4), in our own words.
INSTRUCTIONS = {
    "implications": (
        "Read the passage below. Then list the implications of the passage: facts that follow from it, "
        "directly or indirectly. Write one implication per line."
    ),
    "rewrite": (
        "Read the passage below. Then rewrite it in a few different ways, keeping every fact. "
        "Write one rewrite per line."
    ),
    "self_qa": (
        "Read the passage below. Then turn it into question-answer pairs that cover every fact. "
        "Write each pair as a line 'Question: ...' followed by a line 'Answer: ...'."
    ),
}
STYLES = tuple(INSTRUCTIONS)
_HEADERS = {"implications": "Implications:", "rewrite": "Rewrites:", "self_qa": "Questions and answers:"}
_QA = re.compile(r"(?:^|\n)\s*(?:Q(?:uestion)?\s*\d*\s*[:.])\s*(?P<q>.+?)\s*\n?\s*(?:A(?:nswer)?\s*\d*\s*[:.])\s*"
                 r"(?P<a>[^\n]+)", re.IGNORECASE)


@dataclass
class KnowledgeTask:
    """SQuAD-style passages. Self-edit styles: `implications` (the paper's default), `rewrite`, `self_qa`.

    Each self-edit line (each question-answer pair for `self_qa`) becomes one training example prefixed by the
    title; the passage itself is appended as one more example when `include_passage` (as in the paper).
    `chat=True` makes prompts chat messages (TRL applies the tokenizer's chat template); `None` = decide per
    tokenizer in `build_dataset`.
    """

    style: str = "implications"
    chat: bool | None = None
    include_passage: bool = True
    name: str = "knowledge"
    context_fields: Sequence[str] = ("context_id", "title", "context", "questions")

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"self-edit style must be one of {STYLES}, got {self.style!r}")

    @staticmethod
    def _field(context: Mapping[str, Any], name: str):
        value = context.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DatasetFormatError(f"context {context.get('context_id')!r} is missing field `{name}`")
        return value

    def prompt(self, context: Mapping[str, Any]) -> Prompt:
        title, passage = self._field(context, "title"), self._field(context, "context")
        body = f"{INSTRUCTIONS[self.style]}\n\nTitle: {title}\n{passage}"
        if self.chat:
            return [{"role": "user", "content": body}]
        return f"{body}\n\n{_HEADERS[self.style]}\n"

    def plan(self, context: Mapping[str, Any], self_edit: str, **hyperparameters) -> TrainingPlan:
        title = self._field(context, "title")
        if self.style == "self_qa":
            pairs = [(m["q"].strip(), m["a"].strip()) for m in _QA.finditer(str(self_edit or ""))]
            if not pairs:
                if not str(self_edit or "").strip():
                    raise SelfEditError("empty", "the self-edit is empty", field="self_edit")
                raise SelfEditError("unparseable", "no 'Question: ... Answer: ...' pairs found", field="self_edit")
            lines = [f"Question: {q}\nAnswer: {a}" for q, a in pairs]
        else:
            lines = self_edit_lines(self_edit)
        texts = [f"{title}\n{line}" for line in lines]
        if self.include_passage:
            texts.append(f"{title}\n{self._field(context, 'context')}")
        return TrainingPlan.from_texts(texts, **hyperparameters)

    def probe(self, context: Mapping[str, Any]) -> Probe:
        questions = context.get("questions")
        if not questions:
            raise DatasetFormatError(
                f"context {context.get('context_id')!r} has no questions (field `questions`): every passage "
                "needs at least one question with a gold answer"
            )
        return knowledge_probe(self._field(context, "title"), questions, context_id=context.get("context_id"))

    def build_dataset(self, contexts: Sequence[Mapping[str, Any]], tokenizer=None):
        """A `datasets.Dataset` with a `prompt` column plus the context fields the reward reads."""
        from datasets import Dataset

        if self.chat is None:
            self.chat = bool(getattr(tokenizer, "chat_template", None))
        rows = []
        for i, context in enumerate(contexts):
            missing = [name for name in self.context_fields if name not in context]
            if missing:
                raise DatasetFormatError(f"context {i} is missing field(s) {missing}; each context needs "
                                         f"{list(self.context_fields)} (see seal_trl.tasks.squad loaders)")
            self.probe(context)  # fail fast on a context that cannot be scored
            row = {name: context[name] for name in self.context_fields}
            row["questions"] = [
                {"question": q["question"], "answers": list(q["answers"])} for q in context["questions"]
            ]
            row["prompt"] = self.prompt(context)
            rows.append(row)
        return Dataset.from_list(rows)
