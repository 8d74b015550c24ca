"""Probes: the held-out check for one context (questions + gold answers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class ProbeError(ValueError):
    """A probe that cannot be scored (no questions, no gold answer, ...)."""


@dataclass(frozen=True)
class ProbeItem:
    """One question: the prompt shown to the adapted model and its accepted gold answers."""

    prompt: str
    answers: tuple[str, ...]
    question: str = ""


@dataclass(frozen=True)
class Probe:
    """All the questions for one context. `context_id` keys the cached score before adaptation."""

    items: tuple[ProbeItem, ...]
    context_id: str | None = None

    def __post_init__(self):
        if not self.items:
            raise ProbeError(
                f"probe {self.context_id!r} has no questions: give each context at least one question "
                "with a gold answer (field `questions`)"
            )
        for i, item in enumerate(self.items):
            if not item.answers or not all(isinstance(a, str) and a.strip() for a in item.answers):
                raise ProbeError(
                    f"probe {self.context_id!r}, question {i} ({item.question or item.prompt!r}): "
                    "needs at least one non-empty gold answer (field `answers`)"
                )


def knowledge_prompt(title: str, question: str) -> str:
    """The paper's probe prompt: a topic line, the question, then "Answer:" (the passage is not shown)."""
    return f"Topic: {title}\nQuestion: {question}\nAnswer:"


def knowledge_probe(
    title: str, questions: Iterable[Mapping | tuple[str, Iterable[str] | str]], *, context_id: str | None = None
) -> Probe:
    """Build a probe from `(question, answers)` pairs or SQuAD `qas` dicts."""
    items = []
    for q in questions:
        if isinstance(q, Mapping):
            question = q.get("question")
            answers = [a["text"] if isinstance(a, Mapping) else a for a in q.get("answers", [])]
        else:
            question, answers = q
            answers = [answers] if isinstance(answers, str) else list(answers)
        if not isinstance(question, str) or not question.strip():
            raise ProbeError(f"probe {context_id!r}: a question is missing its text (field `question`)")
        items.append(
            ProbeItem(prompt=knowledge_prompt(title, question.strip()), answers=tuple(answers), question=question)
        )
    return Probe(items=tuple(items), context_id=context_id)
