"""Scan orders of a 2-D grid: each is a permutation with its named geometry."""

from __future__ import annotations

import pytest
import torch

from ssmlab.layers import SCAN_ORDERS, inverse_permutation, scan_order

SHAPES = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (4, 3), (4, 4), (5, 7), (8, 8)]


def coordinates(order: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return order // w, order % w


@pytest.mark.parametrize("name", SCAN_ORDERS)
@pytest.mark.parametrize("h, w", SHAPES)
def test_every_order_is_a_permutation(name, h, w):
    order = scan_order(name, h, w)
    assert order.dtype == torch.long and order.shape == (h * w,)
    assert torch.equal(order.sort().values, torch.arange(h * w))
    x = torch.randn(2, h * w, 3)
    assert torch.equal(x[:, order][:, inverse_permutation(order)], x)


@pytest.mark.parametrize("h, w", SHAPES)
def test_row_and_column(h, w):
    assert torch.equal(scan_order("row", h, w), torch.arange(h * w))
    t = torch.arange(h * w)
    # Column after column: 0, w, 2w, ..., then 1, w + 1, ...
    assert torch.equal(scan_order("column", h, w), (t % h) * w + t // h)


@pytest.mark.parametrize("h, w", SHAPES)
def test_serpentine_reverses_every_other_row(h, w):
    grid = scan_order("serpentine", h, w).view(h, w)
    for i in range(h):
        row = torch.arange(i * w, (i + 1) * w)
        assert torch.equal(grid[i], row if i % 2 == 0 else row.flip(0)), f"row {i}"
    rows, cols = coordinates(grid.reshape(-1), w)
    assert bool(((rows.diff().abs() + cols.diff().abs()) == 1).all()), "consecutive positions not 4-neighbours"


@pytest.mark.parametrize("h, w", SHAPES)
def test_diagonal_zigzags_over_anti_diagonals(h, w):
    rows, cols = coordinates(scan_order("diagonal", h, w), w)
    s = rows + cols
    assert bool((s.diff() >= 0).all()), "sum of coordinates decreases"
    # Each step moves to a king's-move neighbour: along a diagonal or onto the next one at an edge.
    assert bool((torch.maximum(rows.diff().abs(), cols.diff().abs()) == 1).all())


def test_diagonal_is_jpeg_zigzag():
    rows, cols = coordinates(scan_order("diagonal", 3, 5), 5)
    expected = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (2, 2), (1, 3), (0, 4),
                (1, 4), (2, 3), (2, 4)]
    assert list(zip(rows.tolist(), cols.tolist())) == expected


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_hilbert_steps_to_a_4_neighbour_on_power_of_two_grids(n):
    order = scan_order("hilbert", n, n)
    rows, cols = coordinates(order, n)
    assert int(order[0]) == 0, "the curve starts in the top-left corner"
    assert bool(((rows.diff().abs() + cols.diff().abs()) == 1).all())


@pytest.mark.parametrize("h, w, n", [(3, 5, 8), (5, 7, 8), (6, 6, 8), (1, 3, 4), (4, 2, 4), (9, 2, 16)])
def test_hilbert_on_other_grids_is_the_enclosing_curve_cut_to_the_grid(h, w, n):
    full_rows, full_cols = coordinates(scan_order("hilbert", n, n), n)
    inside = (full_rows < h) & (full_cols < w)
    assert torch.equal(scan_order("hilbert", h, w), full_rows[inside] * w + full_cols[inside])


def test_random_is_fixed_by_its_seed():
    a, b = scan_order("random", 6, 5, seed=3), scan_order("random", 6, 5, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, scan_order("random", 6, 5, seed=4))
    assert not torch.equal(a, torch.arange(30))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="scan must be one of"):
        scan_order("spiral", 4, 4)
    with pytest.raises(ValueError, match="h, w"):
        scan_order("row", 0, 4)
