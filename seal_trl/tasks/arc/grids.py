"""ARC grids: validation and a compact text format that round-trips exactly.

A grid is a rectangular 2-D array of colours 0-9 (ARC allows 1x1 up to 30x30). As text, each row is its
digits with no separator and rows are joined by newlines, e.g. ``"012\\n340"``: one token per cell and one
per row break on digit-splitting tokenizers (SmolLM2, Qwen, Llama's digit groups still round-trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_SIDE = 30
Grid = tuple[tuple[int, ...], ...]


class GridError(ValueError):
    """A grid that is not a rectangular array of colours 0-9; the message names the field and the fix."""


def as_array(value: Any, *, field: str = "grid", max_side: int = MAX_SIDE) -> np.ndarray:
    """`value` (nested lists, tuples or a numpy array) as a validated int64 array of shape (rows, cols)."""
    if isinstance(value, np.ndarray):
        rows = value.tolist() if value.ndim == 2 else None
        if rows is None:
            raise GridError(f"{field}: a grid is 2-D (rows of cells); got an array with {value.ndim} dimension(s)")
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        rows = list(value)
    else:
        raise GridError(f"{field}: a grid is a list of rows (lists of colours 0-9); got {type(value).__name__}")
    if not rows:
        raise GridError(f"{field}: the grid has no rows; give at least one row of colours 0-9")
    width = None
    for r, row in enumerate(rows):
        if not isinstance(row, (Sequence, np.ndarray)) or isinstance(row, (str, bytes)):
            raise GridError(f"{field}: row {r} is a {type(row).__name__}, not a list of colours 0-9")
        if width is None:
            width = len(row)
            if width == 0:
                raise GridError(f"{field}: row 0 is empty; every row needs at least one cell")
        elif len(row) != width:
            raise GridError(f"{field}: row {r} has {len(row)} cells but row 0 has {width}; a grid must be "
                            "rectangular (every row the same length)")
        for c, cell in enumerate(row):
            if isinstance(cell, (bool, np.bool_)) or not isinstance(cell, (int, np.integer)):
                raise GridError(f"{field}: cell ({r}, {c}) is {cell!r}; colours are integers 0-9")
            if not 0 <= int(cell) <= 9:
                raise GridError(f"{field}: cell ({r}, {c}) has colour {int(cell)}; colours are 0-9")
    array = np.asarray(rows, dtype=np.int64)
    if max(array.shape) > max_side:
        raise GridError(f"{field}: the grid is {array.shape[0]}x{array.shape[1]}; ARC grids are at most "
                        f"{max_side}x{max_side}")
    return array


def to_tuple(grid: np.ndarray) -> Grid:
    """A hashable, immutable copy of a grid (for probes and voting)."""
    return tuple(tuple(int(c) for c in row) for row in np.asarray(grid))


def to_lists(grid: np.ndarray | Grid) -> list[list[int]]:
    """A grid as JSON-ready nested lists."""
    return [[int(c) for c in row] for row in np.asarray(grid)]


def grid_to_text(grid: np.ndarray | Grid | Sequence[Sequence[int]]) -> str:
    """Rows of digits joined by newlines; `text_to_grid` inverts it exactly."""
    array = as_array(grid)
    return "\n".join("".join(str(int(c)) for c in row) for row in array)


def text_to_grid(text: str, *, field: str = "grid") -> np.ndarray:
    """Parse `grid_to_text`'s format (surrounding whitespace ignored); raises `GridError` if it is not a grid."""
    if not isinstance(text, str):
        raise GridError(f"{field}: expected text, got {type(text).__name__}")
    lines = [line.strip() for line in text.strip().split("\n")]
    if not lines or lines == [""]:
        raise GridError(f"{field}: no grid rows in the text")
    rows = []
    for r, line in enumerate(lines):
        if not line.isascii() or not line.isdigit():
            raise GridError(f"{field}: row {r} ({line[:40]!r}) is not a run of digits 0-9")
        rows.append([int(ch) for ch in line])
    return as_array(rows, field=field)
