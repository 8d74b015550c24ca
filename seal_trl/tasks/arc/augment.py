"""ARC augmentations: pure functions on numpy grids, each with its inverse where one exists.

An `Augmentation` maps a grid to a grid; applied to every grid of a puzzle (demonstrations and query alike)
it yields a new, equally valid puzzle. `invert` maps a prediction made on the augmented puzzle back to the
original one, and raises `NotInvertible` when the prediction is inconsistent with the augmentation (an odd
height after "height x2", unequal tiles after a tiling, ...), so a malformed prediction casts no vote.

Groups (the self-edit's `data_generation` switches, DESIGN.md section 4):
- basic: rotations (90, 180, 270), flips (left-right, up-down), transpose, reflections (the grid joined
  with its mirror image, 4 ways);
- size: resolution x2 (each cell becomes 2x2), height x2, width x2;
- chain: a rotation, flip or transpose followed by a size augmentation;
- repeat: tiling 2x1, 1x2, 2x2.
Colour permutations (`permute_colours`) and demonstration order (`permute_examples`) are separate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class NotInvertible(ValueError):
    """A grid that the inverse of an augmentation cannot map back (inconsistent with the augmentation)."""


@dataclass(frozen=True)
class Augmentation:
    """A named grid transform and its inverse (None where the transform loses information)."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray] | None

    def __call__(self, grid: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(grid))

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """The original-puzzle grid for a grid predicted on the augmented puzzle; raises `NotInvertible`."""
        if self.inverse is None:
            raise NotInvertible(f"augmentation {self.name!r} has no inverse")
        return self.inverse(np.asarray(grid))

    def then(self, other: Augmentation) -> Augmentation:
        """`other` applied after `self`; its inverse undoes `other` first."""
        inverse = None
        if self.inverse is not None and other.inverse is not None:
            inverse = lambda g, a=self, b=other: a.invert(b.invert(g))  # noqa: E731
        return Augmentation(f"{self.name}+{other.name}", lambda g, a=self, b=other: b(a(g)), inverse)


# ----- geometric (the dihedral group: each inverse is another member) -------------------------------------
def rotate(grid: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Rotate counter-clockwise by `quarter_turns` x 90 degrees."""
    return np.rot90(np.asarray(grid), k=quarter_turns).copy()


def flip_left_right(grid: np.ndarray) -> np.ndarray:
    return np.asarray(grid)[:, ::-1].copy()


def flip_up_down(grid: np.ndarray) -> np.ndarray:
    return np.asarray(grid)[::-1, :].copy()


def transpose(grid: np.ndarray) -> np.ndarray:
    return np.asarray(grid).T.copy()


def anti_transpose(grid: np.ndarray) -> np.ndarray:
    """Mirror across the anti-diagonal."""
    return np.asarray(grid)[::-1, ::-1].T.copy()


# ----- reflections: the grid joined with its mirror image ------------------------------------------------
def reflect(grid: np.ndarray, axis: int, mirror_first: bool = False) -> np.ndarray:
    """Join the grid with its mirror image along `axis` (0: stacked vertically, 1: side by side)."""
    grid = np.asarray(grid)
    mirror = np.flip(grid, axis=axis)
    parts = (mirror, grid) if mirror_first else (grid, mirror)
    return np.concatenate(parts, axis=axis)


def unreflect(grid: np.ndarray, axis: int, mirror_first: bool = False) -> np.ndarray:
    """Inverse of `reflect`: the original half, if the two halves are mirror images."""
    grid = np.asarray(grid)
    n = grid.shape[axis]
    if n % 2:
        raise NotInvertible(f"a reflected grid has an even size along axis {axis}; got {n}")
    first, second = np.split(grid, 2, axis=axis)
    original = second if mirror_first else first
    if not np.array_equal(reflect(original, axis, mirror_first), grid):
        raise NotInvertible("the two halves are not mirror images")
    return original.copy()


# ----- size: each cell repeated ---------------------------------------------------------------------------
def upscale(grid: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """Each cell becomes a `rows` x `cols` block."""
    return np.repeat(np.repeat(np.asarray(grid), rows, axis=0), cols, axis=1)


def downscale(grid: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """Inverse of `upscale`: one cell per block, if every block is one colour."""
    grid = np.asarray(grid)
    if grid.shape[0] % rows or grid.shape[1] % cols:
        raise NotInvertible(f"a {grid.shape[0]}x{grid.shape[1]} grid is not made of {rows}x{cols} blocks")
    small = grid[::rows, ::cols]
    if not np.array_equal(upscale(small, rows, cols), grid):
        raise NotInvertible(f"the {rows}x{cols} blocks are not single-coloured")
    return small.copy()


# ----- repeat: the whole grid tiled ---------------------------------------------------------------------
def tile(grid: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    return np.tile(np.asarray(grid), (rows, cols))


def untile(grid: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """Inverse of `tile`: the first tile, if all tiles are equal."""
    grid = np.asarray(grid)
    if grid.shape[0] % rows or grid.shape[1] % cols:
        raise NotInvertible(f"a {grid.shape[0]}x{grid.shape[1]} grid is not {rows}x{cols} tiles")
    first = grid[: grid.shape[0] // rows, : grid.shape[1] // cols]
    if not np.array_equal(tile(first, rows, cols), grid):
        raise NotInvertible("the tiles are not all equal")
    return first.copy()


# ----- colours and example order -------------------------------------------------------------------------
def random_colour_permutation(rng: np.random.Generator, *, keep_background: bool = True) -> np.ndarray:
    """A permutation of the colours 0-9 (an array p: colour c becomes p[c]); 0 stays 0 if `keep_background`."""
    if keep_background:
        return np.concatenate([[0], rng.permutation(np.arange(1, 10))])
    return rng.permutation(10)


def permute_colours(grid: np.ndarray, permutation: Sequence[int]) -> np.ndarray:
    """Recolour: colour c becomes permutation[c]."""
    permutation = np.asarray(permutation)
    if sorted(permutation.tolist()) != list(range(10)):
        raise ValueError(f"permutation must reorder the colours 0-9, got {permutation.tolist()}")
    return permutation[np.asarray(grid)]


def inverse_permutation(permutation: Sequence[int]) -> np.ndarray:
    """The permutation that undoes `permutation`."""
    return np.argsort(np.asarray(permutation))


def permute_examples(examples: Sequence[T], order: Sequence[int]) -> list[T]:
    """The examples in a new order (`order` is a permutation of their indices)."""
    if sorted(order) != list(range(len(examples))):
        raise ValueError(f"order must be a permutation of 0..{len(examples) - 1}, got {list(order)}")
    return [examples[i] for i in order]


def inverse_order(order: Sequence[int]) -> list[int]:
    """The order that restores the original sequence after `permute_examples(examples, order)`."""
    return np.argsort(np.asarray(order)).tolist()


# ----- named groups ----------------------------------------------------------------------------------------
def _aug(name: str, forward, inverse) -> Augmentation:
    return Augmentation(name, forward, inverse)


IDENTITY = _aug("identity", lambda g: np.asarray(g).copy(), lambda g: np.asarray(g).copy())
ROTATE_90 = _aug("rotate_90", lambda g: rotate(g, 1), lambda g: rotate(g, -1))
ROTATE_180 = _aug("rotate_180", lambda g: rotate(g, 2), lambda g: rotate(g, 2))
ROTATE_270 = _aug("rotate_270", lambda g: rotate(g, 3), lambda g: rotate(g, -3))
FLIP_LR = _aug("flip_left_right", flip_left_right, flip_left_right)
FLIP_UD = _aug("flip_up_down", flip_up_down, flip_up_down)
TRANSPOSE = _aug("transpose", transpose, transpose)
ANTI_TRANSPOSE = _aug("anti_transpose", anti_transpose, anti_transpose)

#: The 8 symmetries of the square: exact inverses, used to vote over augmented queries.
DIHEDRAL = (IDENTITY, ROTATE_90, ROTATE_180, ROTATE_270, FLIP_LR, FLIP_UD, TRANSPOSE, ANTI_TRANSPOSE)
_GEOMETRIC = (ROTATE_90, ROTATE_180, ROTATE_270, FLIP_LR, FLIP_UD, TRANSPOSE)

REFLECTIONS = tuple(
    _aug(f"reflect_{'rows' if axis == 0 else 'cols'}{'_mirror_first' if first else ''}",
         lambda g, a=axis, f=first: reflect(g, a, f), lambda g, a=axis, f=first: unreflect(g, a, f))
    for axis in (0, 1) for first in (False, True)
)
BASIC = (*_GEOMETRIC, *REFLECTIONS)
SIZE = (
    _aug("resolution_x2", lambda g: upscale(g, 2, 2), lambda g: downscale(g, 2, 2)),
    _aug("height_x2", lambda g: upscale(g, 2, 1), lambda g: downscale(g, 2, 1)),
    _aug("width_x2", lambda g: upscale(g, 1, 2), lambda g: downscale(g, 1, 2)),
)
CHAIN = tuple(g.then(s) for g in _GEOMETRIC for s in SIZE)
REPEAT = (
    _aug("tile_2x1", lambda g: tile(g, 2, 1), lambda g: untile(g, 2, 1)),
    _aug("tile_1x2", lambda g: tile(g, 1, 2), lambda g: untile(g, 1, 2)),
    _aug("tile_2x2", lambda g: tile(g, 2, 2), lambda g: untile(g, 2, 2)),
)
GROUPS = {"basic": BASIC, "size": SIZE, "chain": CHAIN, "repeat": REPEAT}
ALL = (IDENTITY, *BASIC, *SIZE, *CHAIN, *REPEAT, ANTI_TRANSPOSE)
BY_NAME = {a.name: a for a in ALL}
