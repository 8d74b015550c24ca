"""ARC augmentations: every inverse undoes its augmentation on random grids; bad predictions are refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seal_trl.tasks.arc import augment as aug


def grids(max_side=12):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda s: arrays(np.int64, s, elements=st.integers(0, 9)))


ALL = [a for a in aug.ALL if a.inverse is not None]


def test_every_group_member_has_an_inverse_and_a_unique_name():
    assert len(ALL) == len(aug.ALL) == len(aug.BY_NAME)
    assert (len(aug.BASIC), len(aug.SIZE), len(aug.CHAIN), len(aug.REPEAT)) == (10, 3, 18, 3)


@pytest.mark.parametrize("augmentation", ALL, ids=lambda a: a.name)
@settings(max_examples=40, deadline=None)
@given(grid=grids())
def test_inverse_undoes_augmentation(augmentation, grid):
    original = grid.copy()
    out = augmentation(grid)
    assert np.array_equal(grid, original)  # the input is not modified
    assert np.array_equal(augmentation.invert(out), original)


@settings(max_examples=60, deadline=None)
@given(grid=grids())
def test_augmentations_do_what_their_names_say(grid):
    h, w = grid.shape
    assert aug.BY_NAME["rotate_90"](grid).shape == (w, h)
    assert np.array_equal(aug.BY_NAME["rotate_90"](aug.BY_NAME["rotate_270"](grid)), grid)
    assert np.array_equal(aug.BY_NAME["rotate_180"](grid), grid[::-1, ::-1])
    assert np.array_equal(aug.BY_NAME["transpose"](grid), grid.T)
    assert aug.BY_NAME["resolution_x2"](grid).shape == (2 * h, 2 * w)
    assert aug.BY_NAME["height_x2"](grid).shape == (2 * h, w)
    assert aug.BY_NAME["width_x2"](grid).shape == (h, 2 * w)
    assert aug.BY_NAME["tile_2x2"](grid).shape == (2 * h, 2 * w)
    reflected = aug.BY_NAME["reflect_cols"](grid)
    assert np.array_equal(reflected[:, :w], grid) and np.array_equal(reflected[:, w:], grid[:, ::-1])
    chained = aug.BY_NAME["rotate_90+width_x2"](grid)
    assert np.array_equal(chained, aug.upscale(np.rot90(grid), 1, 2))


@pytest.mark.parametrize("name, bad", [
    ("resolution_x2", np.array([[1, 2], [1, 1]])),  # blocks not single-coloured
    ("resolution_x2", np.array([[1, 1, 1]])),  # odd size
    ("height_x2", np.array([[1], [2], [3]])),
    ("tile_2x2", np.array([[1, 2], [3, 4]])),  # tiles differ
    ("reflect_rows", np.array([[1], [2]])),  # halves are not mirrors
    ("rotate_90+resolution_x2", np.array([[1, 2, 3]])),
])
def test_inverse_refuses_grids_inconsistent_with_the_augmentation(name, bad):
    with pytest.raises(aug.NotInvertible):
        aug.BY_NAME[name].invert(bad)


@settings(max_examples=60, deadline=None)
@given(grid=grids(), seed=st.integers(0, 2**32 - 1), keep=st.booleans())
def test_colour_permutation_round_trips(grid, seed, keep):
    perm = aug.random_colour_permutation(np.random.default_rng(seed), keep_background=keep)
    assert sorted(perm.tolist()) == list(range(10))
    if keep:
        assert perm[0] == 0
    recoloured = aug.permute_colours(grid, perm)
    assert np.array_equal(aug.permute_colours(recoloured, aug.inverse_permutation(perm)), grid)
    # a permutation preserves which cells share a colour
    assert np.array_equal(grid[:, :, None] == grid.reshape(-1)[None, None, :],
                          recoloured[:, :, None] == recoloured.reshape(-1)[None, None, :])


@given(st.lists(st.integers(), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_example_permutation_round_trips(items, seed):
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    shuffled = aug.permute_examples(items, order)
    assert sorted(shuffled) == sorted(items)
    assert aug.permute_examples(shuffled, aug.inverse_order(order)) == items


def test_bad_permutations_are_refused():
    with pytest.raises(ValueError, match="colours 0-9"):
        aug.permute_colours(np.zeros((1, 1), dtype=int), [0] * 10)
    with pytest.raises(ValueError, match="permutation"):
        aug.permute_examples([1, 2], [0, 0])
