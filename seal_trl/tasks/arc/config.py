"""The ARC self-edit: a JSON tool configuration, parsed strictly (DESIGN.md section 4).

    {"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": false,
                         "use_chain_augmentations": false, "use_repeat_augmentations": false},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 0.001, "num_train_epochs": 2}}

Models wrap JSON in prose or code fences, so the first JSON object in the text is read; everything else about
it is strict: every key required, no unknown keys, exact types. Any failure is a `SelfEditError` naming the
field (reward 0). Upper limits (learning rate, epochs, steps) are the plan bounds' job (`ArcTask.plan`).
Before any JSON is parsed the text's length, its number of brackets (which bounds the nesting depth) and,
as each integer is read, its number of digits are bounded, so no self-edit can exhaust the parser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ...plans import SelfEditError, clean_self_edit

Strategy = Literal["train_using_all_tokens", "train_using_output_tokens"]
STRATEGIES = ("train_using_all_tokens", "train_using_output_tokens")
AUGMENTATION_KEYS = ("use_basic_augmentations", "use_size_augmentations", "use_chain_augmentations",
                     "use_repeat_augmentations")
TRAINING_KEYS = ("strategy", "learning_rate", "num_train_epochs")
MAX_CHARS = 20_000
#: At most this many '{' and '[' in a self-edit: the JSON nesting depth cannot exceed it, so the parser's
#: recursion stays far from Python's limit (the configuration itself needs 3).
MAX_BRACKETS = 256
#: The longest integer (digits) the parser converts; Python refuses over 4,300, no setting needs more than 3.
MAX_INT_DIGITS = 32


@dataclass(frozen=True)
class ArcConfig:
    """One parsed ARC self-edit: which augmentation groups generate training data, and how to train."""

    use_basic_augmentations: bool = True
    use_size_augmentations: bool = False
    use_chain_augmentations: bool = False
    use_repeat_augmentations: bool = False
    strategy: Strategy = "train_using_output_tokens"
    learning_rate: float = 1e-3
    num_train_epochs: int = 2

    @property
    def groups(self) -> tuple[str, ...]:
        """The augmentation groups switched on, by name (see `augment.GROUPS`)."""
        flags = zip(("basic", "size", "chain", "repeat"), (self.use_basic_augmentations, self.use_size_augmentations,
                                                          self.use_chain_augmentations, self.use_repeat_augmentations))
        return tuple(name for name, on in flags if on)

    @property
    def loss_on(self) -> str:
        return "all" if self.strategy == "train_using_all_tokens" else "completion"

    def to_dict(self) -> dict:
        return {"data_generation": {k: getattr(self, k) for k in AUGMENTATION_KEYS},
                "training": {k: getattr(self, k) for k in TRAINING_KEYS}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


#: The fixed configuration of the "TTT with a default config" baseline.
DEFAULT_CONFIG = ArcConfig()


def _bounded_int(digits: str) -> int:
    n = len(digits.lstrip("-"))
    if n > MAX_INT_DIGITS:
        raise SelfEditError("out_of_bounds", f"an integer of {n} digits; at most {MAX_INT_DIGITS}", field="self_edit")
    return int(digits)


def check_json_bounds(text: str) -> None:
    """Raise `SelfEditError` if `text` is over `MAX_CHARS` or has more brackets than `MAX_BRACKETS`."""
    if len(text) > MAX_CHARS:
        raise SelfEditError("too_long", f"{len(text)} characters; at most {MAX_CHARS}", field="self_edit")
    brackets = text.count("{") + text.count("[")
    if brackets > MAX_BRACKETS:
        raise SelfEditError("too_deep", f"{brackets} '{{' and '[' brackets; at most {MAX_BRACKETS}, which bounds "
                            "the JSON nesting before parsing", field="self_edit")


def extract_json_object(text: str) -> dict:
    """The first JSON object in `text` (prose and code fences around it are ignored). `text` is bounded first
    (`check_json_bounds`): at most `MAX_BRACKETS` starts are tried, each nested at most that deep."""
    check_json_bounds(text)
    decoder = json.JSONDecoder(parse_int=_bounded_int)
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise SelfEditError("unparseable", "no JSON object found; write one {...} object with keys 'data_generation' "
                        "and 'training'", field="self_edit")


def _exact_keys(obj: object, expected: tuple[str, ...], where: str) -> dict:
    if not isinstance(obj, dict):
        raise SelfEditError("unparseable", f"must be a JSON object with keys {list(expected)}, got "
                            f"{type(obj).__name__}", field=where)
    unknown = [k for k in obj if k not in expected]
    if unknown:
        raise SelfEditError("unparseable", f"unknown key {unknown[0]!r}; allowed keys: {list(expected)}",
                            field=f"{where}.{unknown[0]}" if where else unknown[0])
    missing = [k for k in expected if k not in obj]
    if missing:
        raise SelfEditError("unparseable", f"missing key {missing[0]!r}; required keys: {list(expected)}",
                            field=f"{where}.{missing[0]}" if where else missing[0])
    return obj


def parse_config(raw: str | bytes) -> ArcConfig:
    """Parse a self-edit into an `ArcConfig`; raises `SelfEditError` ("unparseable"/"out_of_bounds"/...)."""
    text = clean_self_edit(raw, max_chars=MAX_CHARS)
    if not text.strip():
        raise SelfEditError("empty", "the self-edit is empty; write the JSON configuration", field="self_edit")
    root = _exact_keys(extract_json_object(text), ("data_generation", "training"), "")
    data = _exact_keys(root["data_generation"], AUGMENTATION_KEYS, "data_generation")
    training = _exact_keys(root["training"], TRAINING_KEYS, "training")
    for key in AUGMENTATION_KEYS:
        if not isinstance(data[key], bool):
            raise SelfEditError("unparseable", f"{data[key]!r} is not true or false", field=f"data_generation.{key}")
    strategy = training["strategy"]
    if strategy not in STRATEGIES:
        raise SelfEditError("unparseable", f"{strategy!r} is not one of {list(STRATEGIES)}", field="training.strategy")
    lr = training["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise SelfEditError("unparseable", f"{lr!r} is not a number", field="training.learning_rate")
    if not math.isfinite(lr) or lr <= 0:
        raise SelfEditError("out_of_bounds", f"{lr!r}; the learning rate must be a positive number such as 1e-4",
                            field="training.learning_rate")
    epochs = training["num_train_epochs"]
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise SelfEditError("unparseable", f"{epochs!r} is not a whole number", field="training.num_train_epochs")
    if epochs < 1:
        raise SelfEditError("out_of_bounds", f"{epochs}; train for at least 1 epoch",
                            field="training.num_train_epochs")
    return ArcConfig(**{k: data[k] for k in AUGMENTATION_KEYS}, strategy=strategy, learning_rate=float(lr),
                     num_train_epochs=epochs)


def sample_parseable_config(generate: Callable[[int], str], max_attempts: int = 3
                            ) -> tuple[ArcConfig | None, str, list[SelfEditError]]:
    """Bounded resampling: call `generate(attempt)` until its text parses, at most `max_attempts` times.

    Returns the config (None if every attempt failed), the text it came from (the last text if none parsed)
    and the errors of the failed attempts.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    errors: list[SelfEditError] = []
    text = ""
    for attempt in range(max_attempts):
        text = generate(attempt)
        try:
            return parse_config(text), text, errors
        except SelfEditError as err:
            errors.append(err)
    return None, text, errors
