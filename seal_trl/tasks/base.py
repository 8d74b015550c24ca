"""The task protocol: what a domain (knowledge passages, ARC puzzles) must provide to SEAL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..plans import SelfEditError, TrainingPlan
from ..probes import Probe

Prompt = str | list[dict[str, str]]


@runtime_checkable
class Task(Protocol):
    """A SEAL task. A *context* is one dataset row (a mapping with at least `context_id`).

    - `prompt(context)`: what the policy sees (plain text, or chat messages that TRL renders with the
      tokenizer's chat template);
    - `plan(context, self_edit, **hyperparameters)`: parse the self-edit into a `TrainingPlan`, raising
      `SelfEditError` for anything unusable (never executes text);
    - `probe(context)`: the held-out check;
    - `context_fields`: the dataset columns the reward needs to rebuild a context.

    Optional hooks: `check_config(config)` refuses a `SEALConfig` the task cannot train under (SEALTrainer calls
    it before loading anything); `baseline(kind)` returns a `Baseline` for the reward's `baseline` option.
    """

    name: str
    context_fields: Sequence[str]

    def prompt(self, context: Mapping[str, Any]) -> Prompt: ...

    def plan(self, context: Mapping[str, Any], self_edit: str, **hyperparameters) -> TrainingPlan: ...

    def probe(self, context: Mapping[str, Any]) -> Probe: ...


class Baseline(Protocol):
    """What a self-edit's adapted score is measured against, per context (optional; the knowledge task's passage
    baselines are `seal_trl.tasks.passage_baseline.PassageBaseline`). A task offering baselines has a method
    `baseline(kind) -> Baseline`; the reward calls it for any `baseline` other than "none".

    `references(contexts, self_edit_tokens, run, **hyperparameters)`: one reference per self-edit, from the tokens
    its successful runs trained on; `run` runs the baseline's own plans, as (context, label, plan, probe)
    requests, and returns each request's results. A reference has a `score` and an `error` (a `SelfEditError`
    that fails the self-edit, or None).
    """

    def references(self, contexts: Sequence[Mapping[str, Any]], self_edit_tokens: Sequence[Sequence[float]],
                   run: Any, **hyperparameters) -> list[Any]: ...


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the last message's content for conversational data.

    Bytes are decoded as UTF-8 with `surrogateescape`, so bytes that are not UTF-8 arrive as lone surrogates
    that the task's parser rejects as "not_utf8" (never as their `b'...'` repr). Anything that is not text (a
    number, NaN, a memoryview, content parts whose `text` is not a string) raises `SelfEditError("unparseable")`:
    it is never read as its repr, and nothing here recurses or converts a number to text.
    """
    if isinstance(completion, Sequence) and not isinstance(completion, (str, bytes, bytearray)) and completion \
            and isinstance(completion[-1], Mapping):
        return _content_text(completion[-1].get("content", ""))
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content", ""))
    return _content_text(completion)


def _content_text(content: Any, *, parts: bool = True) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (bytes, bytearray)):
        return bytes(content).decode("utf-8", "surrogateescape")
    if content is None:
        return ""
    if parts and isinstance(content, Sequence) and all(isinstance(part, Mapping) for part in content):
        # multimodal-style content: a list of {"type": "text", "text": ...} parts, each text a string (one level)
        return "".join(_content_text(part.get("text", ""), parts=False) for part in content)
    raise SelfEditError("unparseable", f"expected text, got {type(content).__name__}", field="self_edit")
