"""Training plans: a parsed, validated self-edit, and the bounds every plan must respect.

A self-edit is untrusted model output. It becomes a `TrainingPlan` only through the functions
here, which read text and numbers and never execute anything. Every rejection is a
`SelfEditError` with a machine-readable `reason` (for metrics) and a message naming the field.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

LossOn = Literal["all", "completion"]

#: The longest self-edit (characters) any parser reads; checked before any regex, JSON parser or tokenizer.
MAX_SELF_EDIT_CHARS = 100_000
#: A cheap character bound checked before tokenizing: an example of more than `max_tokens *
#: CHARS_PER_TOKEN_BOUND` characters cannot fit in `max_tokens` tokens, because no token is that long (the
#: longest SmolLM2 token is 81 characters, a run of spaces; the tiny test tokenizer's is 13; English prose
#: averages about 4). The exact token counts are still checked after tokenizing.
CHARS_PER_TOKEN_BOUND = 128

#: Every reason a self-edit can be rejected or a run can fail; metrics are keyed by these.
FAILURE_REASONS = (
    "empty",  # no usable training text
    "not_utf8",  # bytes that do not decode as UTF-8
    "unparseable",  # text/JSON that does not have the expected shape
    "out_of_bounds",  # a hyperparameter outside PlanBounds
    "too_many_examples",
    "too_long",  # a self-edit over its character cap, or an example or the whole plan over the token limits
    "too_deep",  # JSON with more brackets than the nesting bound checked before parsing
    "copies_context",  # mostly the context's own words, over the reward's max_copied (a training option)
    "over_budget",  # more optimizer steps than the step budget
    "nan_loss",  # training diverged
    "out_of_memory",
    "exception",  # anything else raised inside the inner loop
)


class SelfEditError(ValueError):
    """A self-edit that cannot become a valid plan, or a run that failed.

    `reason` is one of `FAILURE_REASONS`; `field` names the offending part of the self-edit.
    """

    def __init__(self, reason: str, message: str, *, field: str | None = None):
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown SelfEditError reason {reason!r}; use one of {FAILURE_REASONS}")
        self.reason = reason
        self.field = field
        prefix = f"{field}: " if field else ""
        super().__init__(f"[{reason}] {prefix}{message}")


@dataclass(frozen=True)
class TrainingExample:
    """One training example. A plain text has an empty `prompt`; `completion` holds the text."""

    completion: str
    prompt: str = ""

    @property
    def is_pair(self) -> bool:
        return bool(self.prompt)


@dataclass(frozen=True)
class TrainingPlan:
    """A validated self-edit: what to train on and how.

    `loss_on="completion"` puts the loss only on completion tokens (prompts masked with -100);
    `"all"` trains on every real token. `max_steps` caps the optimizer steps if set.
    """

    examples: tuple[TrainingExample, ...]
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    max_steps: int | None = None
    loss_on: LossOn = "all"

    @classmethod
    def from_texts(cls, texts: Iterable[str], **hyperparameters) -> TrainingPlan:
        """A plan over plain texts (continued-pretraining style examples)."""
        return cls(examples=tuple(TrainingExample(completion=t) for t in texts), **hyperparameters)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], **hyperparameters) -> TrainingPlan:
        """A plan over (prompt, completion) pairs; loss on completions unless told otherwise."""
        hyperparameters.setdefault("loss_on", "completion")
        examples = tuple(TrainingExample(prompt=p, completion=c) for p, c in pairs)
        return cls(examples=examples, **hyperparameters)

    @property
    def num_steps(self) -> int:
        """Optimizer steps this plan asks for: batches per epoch x epochs, capped by `max_steps`."""
        steps = math.ceil(len(self.examples) / max(self.batch_size, 1)) * max(self.epochs, 0)
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    def with_hyperparameters(self, **changes) -> TrainingPlan:
        return replace(self, **changes)


@dataclass(frozen=True)
class PlanBounds:
    """Limits a plan must respect; a plan outside them is a failed self-edit (reward 0)."""

    max_examples: int = 64
    max_example_tokens: int = 1024
    max_total_tokens: int = 16_384
    min_learning_rate: float = 1e-6
    max_learning_rate: float = 1e-2
    max_epochs: int = 20
    max_batch_size: int = 16
    step_budget: int = 400
    allowed_loss_on: tuple[str, ...] = field(default=("all", "completion"))

    def check(self, plan: TrainingPlan) -> TrainingPlan:
        """Raise `SelfEditError` unless `plan` is within these bounds; returns the plan."""
        if not plan.examples:
            raise SelfEditError("empty", "the self-edit produced no training examples", field="examples")
        for i, example in enumerate(plan.examples):
            if not example.completion.strip():
                raise SelfEditError("empty", f"example {i} has no text", field=f"examples[{i}]")
        if len(plan.examples) > self.max_examples:
            raise SelfEditError(
                "too_many_examples",
                f"{len(plan.examples)} examples; at most {self.max_examples} allowed (PlanBounds.max_examples)",
                field="examples",
            )
        self.check_char_counts([len(ex.prompt) + len(ex.completion) for ex in plan.examples])
        lr = plan.learning_rate
        if not (isinstance(lr, (int, float)) and math.isfinite(lr)):
            raise SelfEditError("out_of_bounds", f"{lr!r} is not a finite number", field="learning_rate")
        if not self.min_learning_rate <= lr <= self.max_learning_rate:
            raise SelfEditError(
                "out_of_bounds",
                f"{lr:g} is outside [{self.min_learning_rate:g}, {self.max_learning_rate:g}]",
                field="learning_rate",
            )
        _check_int("epochs", plan.epochs, 1, self.max_epochs)
        _check_int("batch_size", plan.batch_size, 1, self.max_batch_size)
        if plan.max_steps is not None:
            _check_int("max_steps", plan.max_steps, 1, self.step_budget)
        if plan.loss_on not in self.allowed_loss_on:
            raise SelfEditError(
                "out_of_bounds", f"{plan.loss_on!r} is not one of {self.allowed_loss_on}", field="loss_on"
            )
        if plan.num_steps > self.step_budget:
            raise SelfEditError(
                "over_budget",
                f"the plan needs {plan.num_steps} optimizer steps; the budget is {self.step_budget} "
                "(fewer epochs or examples, or a larger batch_size)",
                field="epochs",
            )
        return plan

    def check_char_counts(self, counts: Sequence[int]) -> None:
        """Raise `SelfEditError` if an example, or the plan, has too many characters to fit the token limits
        (see `CHARS_PER_TOKEN_BOUND`); cheap, so a giant text is refused before the tokenizer reads it."""
        limit = self.max_example_tokens * CHARS_PER_TOKEN_BOUND
        for i, n in enumerate(counts):
            if n > limit:
                raise SelfEditError(
                    "too_long", f"{n} characters; at most {limit} per example ({CHARS_PER_TOKEN_BOUND} x "
                    "PlanBounds.max_example_tokens), checked before tokenizing", field=f"examples[{i}]",
                )
        total, limit = sum(counts), self.max_total_tokens * CHARS_PER_TOKEN_BOUND
        if total > limit:
            raise SelfEditError(
                "too_long", f"{total} characters in all; at most {limit} ({CHARS_PER_TOKEN_BOUND} x "
                "PlanBounds.max_total_tokens), checked before tokenizing", field="examples",
            )

    def check_token_counts(self, counts: Sequence[int]) -> None:
        """Raise `SelfEditError` if any example, or all of them together, is over the token limits."""
        for i, n in enumerate(counts):
            if n > self.max_example_tokens:
                raise SelfEditError(
                    "too_long",
                    f"{n} tokens; at most {self.max_example_tokens} per example (PlanBounds.max_example_tokens)",
                    field=f"examples[{i}]",
                )
        total = sum(counts)
        if total > self.max_total_tokens:
            raise SelfEditError(
                "too_long",
                f"{total} tokens in all; at most {self.max_total_tokens} (PlanBounds.max_total_tokens)",
                field="examples",
            )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SelfEditError("out_of_bounds", f"{value!r} is not an integer", field=name)
    if not low <= value <= high:
        raise SelfEditError("out_of_bounds", f"{value} is outside [{low}, {high}]", field=name)


def decode_self_edit(raw: str | bytes, *, max_chars: int = MAX_SELF_EDIT_CHARS) -> str:
    """The self-edit as text, at most `max_chars` characters (checked first); bytes must be UTF-8 and a str
    must not hold lone surrogates (what undecodable bytes become under `surrogateescape`)."""
    if not isinstance(raw, (str, bytes)):
        raise SelfEditError("unparseable", f"expected text, got {type(raw).__name__}", field="self_edit")
    # UTF-8 spends at most 4 bytes a character, so more bytes than that cannot decode to max_chars characters
    if len(raw) > (4 * max_chars if isinstance(raw, bytes) else max_chars):
        unit = "bytes" if isinstance(raw, bytes) else "characters"
        raise SelfEditError("too_long", f"{len(raw)} {unit}; at most {max_chars} characters", field="self_edit")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SelfEditError(
                "not_utf8", f"byte {err.start} is not valid UTF-8; pass text or UTF-8 bytes", field="self_edit"
            ) from None
        if len(raw) > max_chars:
            raise SelfEditError("too_long", f"{len(raw)} characters; at most {max_chars}", field="self_edit")
    surrogate = _SURROGATE.search(raw)
    if surrogate:
        raise SelfEditError(
            "not_utf8", f"character {surrogate.start()} is a lone surrogate (U+{ord(surrogate.group()):04X}), "
            "which is not text: the completion was not valid UTF-8", field="self_edit",
        )
    return raw


_SURROGATE = re.compile("[\ud800-\udfff]")
# Terminal escape sequences (CSI such as colours, OSC such as titles, two-character escapes); each part is
# unambiguous, so matching is linear.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_LINE_BREAKS = str.maketrans(dict.fromkeys("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", "\n"))
# Hangul fillers are letters to `str.isalnum` but render as nothing.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _visible(ch: str) -> bool:
    if ch.isprintable():  # fast path: no control, format, surrogate or private-use character is printable
        return ch not in _BLANK_LETTERS
    return ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")


def strip_invisible(text: str) -> str:
    """`text` without terminal escape sequences, control characters (but newline and tab) and format
    characters (zero-width spaces, bidi marks, soft hyphens...). Every line break `str.splitlines` knows
    (`\\r\\n`, `\\r`, form feed, U+2028...) becomes `\\n`."""
    text = _ANSI.sub("", text.replace("\r\n", "\n").translate(_LINE_BREAKS))
    return "".join(filter(_visible, text))


def has_word(text: str) -> bool:
    """Whether `text` holds a letter or a digit: a line without one has nothing to learn."""
    return any(ch.isalnum() for ch in text)


def clean_self_edit(raw: str | bytes, *, max_chars: int = MAX_SELF_EDIT_CHARS) -> str:
    """`decode_self_edit` then `strip_invisible`: the text every self-edit parser reads."""
    return strip_invisible(decode_self_edit(raw, max_chars=max_chars))


# A list marker is followed by a space, or ends the line (a bare "1." has nothing to learn).
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])(?:\s+|$)")
_PREAMBLE = re.compile(
    r"^\s*(?:sure|here (?:are|is)|okay|ok|certainly|of course|below (?:are|is))\b.*[:!.]\s*$", re.IGNORECASE
)


def self_edit_lines(raw: str | bytes, *, max_chars: int = MAX_SELF_EDIT_CHARS) -> list[str]:
    """The lines of a self-edit that hold a letter or digit, with list markers and chatty preambles removed.

    Control and format characters are stripped first (`strip_invisible`). Raises `SelfEditError` for non-UTF-8
    input, text over `max_chars` (checked before anything else), or nothing left ("empty").
    """
    text = clean_self_edit(raw, max_chars=max_chars)
    lines = []
    for line in text.split("\n"):
        line = _LIST_MARKER.sub("", line).strip()
        if not has_word(line) or _PREAMBLE.match(line):
            continue
        lines.append(line)
    if not lines:
        raise SelfEditError("empty", "the self-edit has no line with a letter or digit", field="self_edit")
    return lines
