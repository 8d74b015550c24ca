"""ARC grids: validation errors name the field; the text format round-trips exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seal_trl.tasks.arc.grids import GridError, as_array, grid_to_text, text_to_grid, to_lists, to_tuple


def grids(max_side=30):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda s: arrays(np.int64, s, elements=st.integers(0, 9)))


@settings(max_examples=200, deadline=None)
@given(grids())
def test_text_round_trip_is_exact(grid):
    text = grid_to_text(grid)
    assert np.array_equal(text_to_grid(text), grid)
    assert text.count("\n") == grid.shape[0] - 1  # one line per row, nothing else
    assert np.array_equal(as_array(to_lists(grid)), grid) and np.array_equal(np.asarray(to_tuple(grid)), grid)


def test_text_format_is_compact_digits():
    assert grid_to_text([[0, 1, 2], [3, 4, 5]]) == "012\n345"
    assert text_to_grid("  012\n345\n").tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("grid, message", [
    ([[1, 2], [3]], "row 1 has 1 cells but row 0 has 2"),
    ([[1, 10]], "colour 10"),
    ([[1, -1]], "colour -1"),
    ([[1, 2.5]], "integers 0-9"),
    ([[True]], "integers 0-9"),
    ([], "no rows"),
    ([[]], "row 0 is empty"),
    ("12", "list of rows"),
    ([[0] * 31], "at most 30x30"),
    (np.zeros((2, 2, 2), dtype=int), "2-D"),
])
def test_bad_grids_name_the_field_and_the_fix(grid, message):
    with pytest.raises(GridError, match="train\\[0\\].input") as err:
        as_array(grid, field="train[0].input")
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["", "12\n3a", "1 2\n3 4", "12\n345", "x"])
def test_unparseable_text_is_a_grid_error(text):
    with pytest.raises(GridError):
        text_to_grid(text)
