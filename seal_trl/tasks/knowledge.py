"""Knowledge incorporation: adapt to a passage so that questions about it can be answered without it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..inner.tensors import encode_text
from ..plans import CHARS_PER_TOKEN_BOUND, SelfEditError, TrainingPlan, clean_self_edit, has_word, self_edit_lines
from ..probes import Probe, knowledge_probe
from ..seeding import check_distinct_context_ids
from ..text_checks import special_token_text
from .base import Prompt
from .passage_baseline import PassageBaseline, matching_copies  # noqa: F401 (matching_copies: re-exported)
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
# Question and answer markers ("Q:", "Question 2.", "A:", "Answer:"), matched at the start of a stripped line;
# an answer marker may also follow the question on its line after a space. Adjacent parts of a pattern never
# match the same character, so no match backtracks more than once over a run (linear time).
_QUESTION = re.compile(r"(?:question|q)[ \t]*(?:\d+[ \t]*)?[:.]", re.IGNORECASE)
_ANSWER = re.compile(r"(?:answer|a)[ \t]*(?:\d+[ \t]*)?[:.]", re.IGNORECASE)
_INLINE_ANSWER = re.compile(r"(?<!\S)(?:answer|a)[ \t]*(?:\d+[ \t]*)?[:.]", re.IGNORECASE)


def _after_question_marker(rest: str, pairs: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Read the text after a question marker; returns (pending question, what the next line must be)."""
    if not rest:
        return None, "question"
    inline = _INLINE_ANSWER.search(rest)
    if inline is None:
        return rest, "answer"
    question, answer = rest[:inline.start()].strip(), rest[inline.end():].strip()
    if answer:
        pairs.append((question, answer))
        return None, None
    return question, "answer_text"


def qa_pairs(text: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a self_qa self-edit, in one pass over its lines.

    A pair is a question marker at the start of a line, the question (on that line or the next), then an
    answer marker (later on the question's line, or at the start of the next line) and the answer (the rest of
    that line, or the next line). Blank lines between the parts are skipped; a new question marker starts over.
    """
    pairs: list[tuple[str, str]] = []
    question, expect = None, None
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        marker = _QUESTION.match(line)
        if marker:
            question, expect = _after_question_marker(line[marker.end():].strip(), pairs)
        elif expect == "question":
            question, expect = _after_question_marker(line, pairs)
        elif expect == "answer" and (marker := _ANSWER.match(line)):
            answer = line[marker.end():].strip()
            if answer:
                pairs.append((question, answer))
            question, expect = (None, None) if answer else (question, "answer_text")
        elif expect == "answer_text":
            pairs.append((question, line))
            question, expect = None, None
        else:
            question, expect = None, None
    return pairs


def self_qa_pairs(raw: str | bytes) -> list[tuple[str, str]]:
    """The pairs of a self_qa self-edit whose question and answer both hold a letter or digit.

    The text is capped and cleaned first (`plans.clean_self_edit`); raises `SelfEditError`: "empty" when no
    line would be left as training text (`plans.self_edit_lines`), else "unparseable" when no pair is found.
    """
    text = clean_self_edit(raw)
    pairs = [(q, a) for q, a in qa_pairs(text) if has_word(q) and has_word(a)]
    if not pairs:
        self_edit_lines(text)  # raises "empty" when nothing but junk, markers and preambles is there
        raise SelfEditError("unparseable", "no 'Question: ... Answer: ...' pairs found", field="self_edit")
    return pairs


COPY_NGRAM = 6  # words per sequence when measuring how much of a self-edit is the passage's own text
_WORD = re.compile(r"\w+")


def copied_share(self_edit: str, passage: str, n: int = COPY_NGRAM) -> float:
    """The share of the self-edit's n-word sequences that also occur in the passage (case and punctuation
    ignored): 1.0 for a verbatim copy, near 0 for a self-edit in its own words, 0 for one under n words."""
    words = _WORD.findall((self_edit or "").lower())
    grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    if not grams:
        return 0.0
    source = _WORD.findall(passage.lower())
    return len(grams & {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}) / len(grams)


def leading_part(text: str, fraction: float) -> str:
    """The first `fraction` of `text` by characters, cut back to a word boundary ('' for a fraction <= 0)."""
    end = round(len(text) * fraction)
    if end <= 0:
        return ""
    if end < len(text) and not text[end].isspace() and " " in text[:end]:
        end = text.rindex(" ", 0, end)
    return text[:end].rstrip()


def check_passages_fit(contexts: Sequence[Mapping[str, Any]], tokenizer, max_tokens: int) -> None:
    """Refuse (`DatasetFormatError`, before any adaptation) a context whose title and passage, the example every
    plan trains on, are over `max_tokens` (the inner loop's `min(max_seq_length, bounds.max_example_tokens)`): every
    adaptation to it would fail as too_long and the table would show it unadapted. Characters are counted first, so
    a giant passage is refused without being tokenised."""
    for i, context in enumerate(contexts):
        text = f"{context.get('title', '')}\n{context.get('context', '')}"
        n = len(text) if len(text) > max_tokens * CHARS_PER_TOKEN_BOUND else len(encode_text(tokenizer, text))
        unit = "characters" if len(text) > max_tokens * CHARS_PER_TOKEN_BOUND else "tokens"
        if n > max_tokens:
            raise DatasetFormatError(
                f"context {i} ({context.get('context_id')!r}): title and passage are {n} {unit}; the inner loop trains "
                f"on at most {max_tokens} tokens per example (max_seq_length), so every adaptation would fail as "
                "too_long: split the passage (or shorten the title)")


def _refuse_special_tokens(context: Mapping[str, Any], tokenizer, index: int) -> None:
    """A title or passage that writes one of the tokenizer's special tokens is refused: TRL renders the policy's
    prompt with the chat template and tokenises it as one string, where `<|im_end|>` in the passage would end the
    user's turn. (The inner loop and `generate_text` tokenise content with special tokens split, see
    `inner.tensors.encode_text`.)"""
    for name in ("title", "context"):
        token = special_token_text(str(context.get(name, "")), tokenizer)
        if token is not None:
            raise DatasetFormatError(f"context {index} ({context.get('context_id')!r}): field `{name}` contains the "
                                     f"tokenizer's special token {token!r}, which would act as a control token in "
                                     "the policy's chat prompt; remove it from the data")


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

    @classmethod
    def from_config(cls, config) -> KnowledgeTask:
        """The task a `SEALConfig` trains with: its `self_edit_style`."""
        if config.self_edit_style not in STYLES:
            raise ValueError(f"self_edit_style={config.self_edit_style!r}; choose one of {STYLES}")
        return cls(style=config.self_edit_style)

    def check_config(self, config) -> None:
        """Refuse a `SEALConfig` under which every self-edit would fail: a knowledge plan trains `inner_epochs`
        epochs of at least one step each (ARC self-edits choose their own epochs, so this is the task's check)."""
        if config.inner_epochs > config.inner_step_budget:
            raise ValueError(f"inner_step_budget={config.inner_step_budget} is below "
                             f"inner_epochs={config.inner_epochs}: every knowledge self-edit would fail as "
                             "over_budget; raise inner_step_budget or lower inner_epochs")

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
            pairs = self_qa_pairs("" if self_edit is None else self_edit)
            lines = [f"Question: {q}\nAnswer: {a}" for q, a in pairs]
        else:
            lines = self_edit_lines(self_edit)
        texts = [f"{title}\n{line}" for line in lines]
        if self.include_passage:
            texts.append(f"{title}\n{self._field(context, 'context')}")
        return TrainingPlan.from_texts(texts, **hyperparameters)

    def passage_plan(self, context: Mapping[str, Any], copies: float = 1, **hyperparameters) -> TrainingPlan:
        """The passage-only baseline's plan: the passage itself (title-prefixed), `copies` times per epoch. A
        fractional part adds one shortened copy: the passage's leading part of that fraction, cut at a word."""
        if isinstance(copies, bool) or not isinstance(copies, (int, float)) or not 1 <= copies < float("inf"):
            raise ValueError(f"copies must be a number >= 1, got {copies!r}")
        text = f"{self._field(context, 'title')}\n{self._field(context, 'context')}"
        whole = int(copies)
        rest = leading_part(text, copies - whole)
        return TrainingPlan.from_texts([text] * whole + ([rest] if rest else []), **hyperparameters)

    def baseline(self, kind: str) -> PassageBaseline:
        """The reward's baseline `kind`: 'passage' or 'passage-matched' (see `seal_trl.tasks.passage_baseline`)."""
        return PassageBaseline(self, kind)

    def copied_share(self, context: Mapping[str, Any], self_edit: str) -> float:
        """How much of the self-edit is the passage's own text (see `copied_share`)."""
        return copied_share(self_edit, self._field(context, "context"))

    def check_not_copied(self, context: Mapping[str, Any], self_edit: str, max_copied: float) -> None:
        """Raise `SelfEditError` "copies_context" when more than `max_copied` of the self-edit's n-word sequences
        are the passage's own."""
        share = self.copied_share(context, self_edit)
        if share > max_copied:
            raise SelfEditError("copies_context", f"{share:.0%} of its {COPY_NGRAM}-word sequences are the passage's "
                                f"own (max_copied {max_copied:.0%})", field="self_edit")

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
        check_distinct_context_ids(contexts)
        rows = []
        for i, context in enumerate(contexts):
            missing = [name for name in self.context_fields if name not in context]
            if missing:
                raise DatasetFormatError(f"context {i} is missing field(s) {missing}; each context needs "
                                         f"{list(self.context_fields)} (see seal_trl.tasks.squad loaders)")
            self.probe(context)  # fail fast on a context that cannot be scored
            if tokenizer is not None:
                _refuse_special_tokens(context, tokenizer, i)
            row = {name: context[name] for name in self.context_fields}
            row["questions"] = [
                {"question": q["question"], "answers": list(q["answers"])} for q in context["questions"]
            ]
            row["prompt"] = self.prompt(context)
            rows.append(row)
        return Dataset.from_list(rows)
