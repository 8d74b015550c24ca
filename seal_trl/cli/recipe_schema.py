"""The recipe's settings checked by type and range before any dataclass is built, so before anything loads.

TrlParser hands YAML values to the dataclasses unconverted (`seed: 1.5`, `data: 42`, `max_steps: [1]` reach
`__post_init__` or training as they are), and no field of TRL or transformers has a lower bound
(`num_generations: 0` divides by zero, `num_iterations: 0` trains nothing). The schema is derived from the
dataclass fields' type annotations (Optional, Union, Literal, Enum, bool, int, float, str, list, dict), plus
`RANGES` for the fields whose values have bounds. A bad value is one `UsageError` naming the field, what it got and
what it expects.
"""

from __future__ import annotations

import enum
import math
import reprlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Union

from .flags import MAX_NEW_TOKENS, UsageError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting; `unset` is a value that means "not set" and is always allowed."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False  # the minimum itself is not allowed
    unset: float | None = None

    def allows(self, value: float) -> bool:
        if value == self.unset:
            return True
        if self.minimum is not None and (value <= self.minimum if self.exclusive else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        low = "" if self.minimum is None else f"{'>' if self.exclusive else '>='} {_number(self.minimum)}"
        high = "" if self.maximum is None else f"<= {_number(self.maximum)}"
        text = " and ".join(part for part in (low, high) if part)
        return text + (f" (or {_number(self.unset)} for unset)" if self.unset is not None else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


AT_LEAST_ONE = Range(1)
POSITIVE = Range(0, exclusive=True)
SHARE = Range(0, 1)

#: Bounds of the SEALConfig, TRL, transformers and data fields a recipe sets (None always passes: "unset").
RANGES: dict[str, Range] = {
    # transformers / TRL: the run's length, batching and saving
    "max_steps": Range(1, unset=-1), "num_train_epochs": POSITIVE, "num_generations": AT_LEAST_ONE,
    "num_iterations": AT_LEAST_ONE, "steps_per_generation": AT_LEAST_ONE, "generation_batch_size": AT_LEAST_ONE,
    "per_device_train_batch_size": AT_LEAST_ONE, "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE, "save_steps": POSITIVE, "eval_steps": POSITIVE,
    "logging_steps": POSITIVE, "save_total_limit": AT_LEAST_ONE, "seed": Range(0, 2**32 - 1),
    "data_seed": Range(0, 2**32 - 1), "learning_rate": POSITIVE, "warmup_steps": Range(0),
    "weight_decay": Range(0), "max_grad_norm": Range(0), "temperature": POSITIVE, "top_p": Range(0, 1, exclusive=True),
    "max_completion_length": Range(1, MAX_NEW_TOKENS),
    "dataloader_num_workers": Range(0),
    # SEALConfig
    "rest_em_top_k": AT_LEAST_ONE, "reward_repeats": AT_LEAST_ONE, "inner_lora_r": AT_LEAST_ONE,
    "inner_lora_alpha": POSITIVE, "inner_lora_dropout": Range(0, 0.999), "inner_learning_rate": POSITIVE,
    "inner_epochs": AT_LEAST_ONE, "inner_batch_size": AT_LEAST_ONE, "inner_max_seq_length": AT_LEAST_ONE,
    "inner_step_budget": AT_LEAST_ONE, "inner_max_examples": AT_LEAST_ONE,
    "inner_max_new_tokens": Range(1, MAX_NEW_TOKENS), "inner_max_exception_rate": SHARE,
    "reward_forgetting_weight": Range(0), "reward_constraint_weight": Range(0),
    # ModelConfig (policy LoRA)
    "lora_r": AT_LEAST_ONE, "lora_alpha": POSITIVE, "lora_dropout": Range(0, 0.999),
    # SEALScriptArguments
    "max_train_contexts": AT_LEAST_ONE, "max_eval_contexts": AT_LEAST_ONE, "arc_max_tokens": AT_LEAST_ONE,
    "arc_answer_tokens": Range(1, MAX_NEW_TOKENS),
}


#: Fields whose annotation is narrower than what their __post_init__ takes: typed str so that the command line accepts
#: "auto", SEALConfig.inner_batch_self_edits also takes a YAML integer.
ANNOTATIONS: dict[str, Any] = {"inner_batch_self_edits": int | str}


@dataclass(frozen=True)
class Rule:
    """What a field's annotation allows: a test and the words for it."""

    test: Callable[[Any], bool]
    expects: str


ANYTHING = Rule(lambda value: True, "anything")


def rule_for(annotation: Any) -> Rule:
    """The rule of a type annotation; a type the schema does not know allows anything (its field checks itself)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return Rule(lambda value: value is None, "null")
    if origin in (Union, types.UnionType):
        if str in args:  # an Enum beside str takes any text (its own __post_init__ checks the value)
            args = tuple(arg for arg in args if not (isinstance(arg, type) and issubclass(arg, enum.Enum)))
        rules = [rule_for(arg) for arg in args]
        if ANYTHING in rules:
            return ANYTHING
        return Rule(lambda value: any(r.test(value) for r in rules), " or ".join(r.expects for r in rules))
    if origin is Literal:
        return Rule(lambda value: any(value == a and type(value) is type(a) for a in args),
                    "one of " + ", ".join(map(repr, args)))
    if annotation is bool:
        return Rule(lambda value: isinstance(value, bool), "true or false")
    if annotation is int:
        return Rule(lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer")
    if annotation is float:
        return Rule(lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value), "a finite number")
    if annotation is str:
        return Rule(lambda value: isinstance(value, str), "text")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
        return Rule(lambda value: isinstance(value, annotation) or value in values,
                    "one of " + ", ".join(map(repr, values)))
    if annotation is list or origin is list:
        item = rule_for(args[0]) if args else ANYTHING
        # a bare name is one item, as argparse reads a YAML string for a list field (`lora_target_modules: all-linear`)
        bare = args and args[0] is str
        return Rule(lambda value: (isinstance(value, list) and all(item.test(v) for v in value))
                    or (bare and isinstance(value, str)), f"a list of {_plural(item.expects)}")
    if annotation is dict or origin is dict:  # passed on as keyword arguments: the keys must be names
        return Rule(lambda value: isinstance(value, dict) and all(isinstance(k, str) for k in value),
                    "a mapping with text keys")
    return ANYTHING


def _plural(expects: str) -> str:
    return {"text": "strings", "an integer": "integers", "a finite number": "numbers"}.get(expects, expects)


def schema(dataclass_types: Iterable[type]) -> dict[str, Rule]:
    """Every field of `dataclass_types` and the rule of its annotation (field names are unique across the classes,
    as HfArgumentParser requires). A field whose default is None takes None whatever its annotation says, and so
    does one whose default is "" (HfArgumentParser parses TrainingArguments.debug's "" as None)."""
    rules: dict[str, Rule] = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                rule = rule_for(ANNOTATIONS.get(f.name, hints.get(f.name, Any)))
                if f.default in (None, "") and not rule.test(None):
                    rule = Rule(lambda value, test=rule.test: value is None or test(value), f"null or {rule.expects}")
                rules[f.name] = rule
    return rules


def check_settings(values: Mapping[str, Any], dataclass_types: Iterable[type]) -> None:
    """Refuse the first value of `values` (field name -> value, as the parser merged YAML and flags) that its
    field's type or range does not allow, with one `UsageError` that names the field."""
    rules = schema(dataclass_types)
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None:
            continue
        if not rule.test(value):
            raise UsageError(f"{name}: got {_show(value)}, expects {rule.expects}; fix the recipe's `{name}:` or "
                             f"--{name}")
        bounds = RANGES.get(name)
        if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not bounds.allows(value):
            raise UsageError(f"{name}: got {_show(value)}, expects a value {bounds.describe()}; fix the recipe's "
                             f"`{name}:` or --{name}")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)
    return f"{_REPR.repr(value)} ({kind})"
