"""Checks of `seal-trl`'s flags that run before anything loads: argparse types for numbers, and paths.

A bad value ends the command with one line that names the flag, the allowed range and the value given, e.g.
`error: argument --limit: must be >= 1, got '-1' (see seal-trl evaluate --help)`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from ..plans import PlanBounds

BOUNDS = PlanBounds()


class UsageError(ValueError):
    """A flag or argument the user can fix; `seal-trl` prints it as one line and exits with code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with the command's --help to read) instead of the usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def batch_self_edits(text: str) -> int | str:
    """An argparse type: K >= 1 adapter slots, or 'auto'."""
    from ..inner.config import parse_batch_self_edits

    try:
        return parse_batch_self_edits(text, "the value")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def phrase(text: str) -> str:
    """An argparse type: text with something other than whitespace in it."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a phrase, got {text!r}")
    return text


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        _check_range(value, text, minimum, maximum, exclusive=False)
        return value

    return parse


def number(minimum: float | None = None, maximum: float | None = None, *, exclusive: bool = False
           ) -> Callable[[str], float]:
    """An argparse type: a finite number >= minimum (> minimum when `exclusive`) and <= maximum."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        _check_range(value, text, minimum, maximum, exclusive=exclusive)
        return value

    return parse


def _check_range(value: float, text: str, minimum: float | None, maximum: float | None, *, exclusive: bool) -> None:
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise argparse.ArgumentTypeError(f"must be {'>' if exclusive else '>='} {minimum:g}, got {text!r}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, got {text!r}")


#: Inner-loop settings a plan may have (PlanBounds): outside them every self-edit would fail as out of bounds.
inner_epochs = integer(1, BOUNDS.max_epochs)
inner_learning_rate = number(BOUNDS.min_learning_rate, BOUNDS.max_learning_rate)
#: Longest self-edit or completion a command generates (tokens): far past any model's context is a typo.
MAX_NEW_TOKENS = 32_768
max_new_tokens = integer(1, MAX_NEW_TOKENS)


def inner_lora_r(text: str) -> int:
    """An argparse type: the inner adapter's LoRA rank, in [1, InnerLoopConfig's MAX_LORA_R]."""
    from ..inner.config import MAX_LORA_R

    return integer(1, MAX_LORA_R)(text)




def temperature(text: str) -> float:
    """An argparse type: a self-edit sampling temperature, 0 (greedy) or in generation's [MIN_TEMPERATURE,
    MAX_TEMPERATURE]."""
    from ..generation import check_temperature

    value = number()(text)
    try:
        return check_temperature(value, "the value")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_output_dir(path: str, flag: str = "--output-dir") -> None:
    """Refuse an output directory that is empty text, a file, lies under a file, is (or lies under) a symbolic link
    to nothing, or cannot be written; nothing is created."""
    if not str(path).strip():
        raise UsageError(f"{flag} is empty; pass a directory for the run (e.g. runs/my-run)")
    target = Path(path).expanduser()
    dangling = next((p for p in (target, *target.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:
        raise UsageError(f"{flag} {path!r}: {dangling} is a symbolic link to {os.readlink(dangling)!r}, which does "
                         "not exist; create its target or pass another directory")
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise UsageError(f"{flag} {path!r}: {existing} is not a directory; pass a directory for the run directories")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r}: {existing} is not writable; pass a directory you can write to")


#: A recipe YAML is a page of settings; a larger file is not one.
MAX_CONFIG_BYTES = 1_000_000


def check_recipe_config(path: str) -> object:
    """The content of a recipe YAML (`--config`), refused when TrlParser would fail on it with a traceback or a
    hang: not a regular file, too large, not UTF-8, not YAML, a repeated key, aliases that expand past a bound, or
    a key that is not a string. (TrlParser itself says when it is YAML but not a mapping.)"""
    import yaml

    from ..safe_json import read_bytes
    from ..safe_yaml import load_yaml

    raw = read_bytes(path, max_bytes=MAX_CONFIG_BYTES, error=UsageError,
                     hint=" (--config takes a recipe YAML file, e.g. recipes/smollm2-135m/cpu_demo.yaml)")
    try:
        content = load_yaml(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise UsageError(f"--config {path}: byte {err.start} is not valid UTF-8; save the recipe as UTF-8") from None
    except (yaml.YAMLError, RecursionError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or "nested too deeply"
        raise UsageError(f"--config {path}: not valid YAML{at} ({problem}); fix the recipe file") from None
    for where, mapping in (("", content), ("env: ", content.get("env") if isinstance(content, dict) else None)):
        bad = [key for key in mapping if not isinstance(key, str)] if isinstance(mapping, dict) else []
        if bad:
            raise UsageError(f"--config {path}: {where}the key {bad[0]!r} is not a setting name; keys are names "
                             "such as max_steps (quote a key that must be text)")
    return content


def check_adapter(path: str | None, flag: str) -> None:
    """A local adapter must be a directory with adapter_config.json; a Hub name is checked when it loads."""
    if path is None:
        return
    local = Path(path).expanduser()
    if local.exists() and not (local / "adapter_config.json").is_file():
        raise UsageError(f"{flag} {path!r} has no adapter_config.json; pass a PEFT adapter directory (e.g. a SEAL "
                         "run's output_dir) or a Hub name")
    if not local.exists() and path.startswith((".", "/", "~")):
        raise UsageError(f"{flag} {path!r} does not exist; pass a PEFT adapter directory or a Hub name")
