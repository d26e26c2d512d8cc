"""Scan orders: the order in which a 2-D grid of patches becomes a 1-D sequence.

A sequence model reads an image as a sequence, so the order of the patches decides
which ones are close in the sequence. ViT (arXiv 2010.11929) and Vision Mamba
(arXiv 2401.09417) read rows (a raster scan); VMamba (arXiv 2401.10166) reads rows
and columns, each forwards and backwards (its cross-scan); curves that keep
neighbours close, such as the Hilbert curve, are a common alternative.

An order is a permutation ``order`` (h * w,) of the row-major indices
``i * w + j``: position ``t`` of the sequence is patch ``order[t]``, so a row-major
``x`` (B, h * w, D) is scanned with ``x[:, order]`` and put back with
``y[:, inverse_permutation(order)]``.
"""

from __future__ import annotations

import torch

SCAN_ORDERS = ("row", "column", "serpentine", "diagonal", "hilbert", "random")


def scan_order(name: str, h: int, w: int, *, seed: int = 0) -> torch.Tensor:
    """The permutation (h * w,) of row-major indices that scans an ``h`` x ``w`` grid in order ``name``.

    * ``"row"``: raster scan, row after row, left to right: 0, 1, 2, ...
    * ``"column"``: column after column, top to bottom: 0, w, 2w, ...
    * ``"serpentine"``: rows, alternately left to right and right to left (boustrophedon),
      so consecutive positions are always 4-neighbours.
    * ``"diagonal"``: the zigzag of JPEG over the anti-diagonals ``i + j = s`` for
      s = 0, 1, ...: (0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), ...
    * ``"hilbert"``: the Hilbert curve of the enclosing 2^k x 2^k grid, keeping the
      positions that fall inside the ``h`` x ``w`` grid; on a square power-of-two grid
      consecutive positions are 4-neighbours.
    * ``"random"``: a fixed permutation drawn from ``seed`` (default 0), the same on every call.
    """
    if not isinstance(h, int) or not isinstance(w, int) or h < 1 or w < 1:
        raise ValueError(f"scan_order: grid size h, w must be positive ints, got {h!r}, {w!r}")
    rows = torch.arange(h).repeat_interleave(w)  # (h * w,) row of each row-major index
    cols = torch.arange(w).repeat(h)
    if name == "row":
        return torch.arange(h * w)
    if name == "column":
        return torch.arange(h * w).view(h, w).t().reshape(-1)
    if name == "serpentine":
        grid = torch.arange(h * w).view(h, w).clone()
        grid[1::2] = grid[1::2].flip(1)
        return grid.reshape(-1)
    if name == "diagonal":
        s = rows + cols
        # Along even anti-diagonals the row falls (moving up and right), along odd ones it rises.
        along = torch.where(s % 2 == 0, -rows, rows)
        return torch.argsort(s * 2 * h + along)
    if name == "hilbert":
        return _hilbert_order(h, w)
    if name == "random":
        return torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"scan must be one of {SCAN_ORDERS}, got {name!r}")


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: ``x[order][inverse_permutation(order)] == x``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def _hilbert_order(h: int, w: int) -> torch.Tensor:
    """Row-major indices along the Hilbert curve of side ``n = 2^k >= max(h, w)``, cut to the grid.

    Distance ``d`` along the curve is turned into coordinates two bits at a time, from
    the finest quadrant level up: each pair of bits picks one of four quadrants of a
    block of side ``s``, and the coordinates found so far are rotated or reflected into
    the orientation that the curve has in that quadrant.
    """
    n = 1
    while n < max(h, w):
        n *= 2
    d = torch.arange(n * n)
    x = torch.zeros_like(d)  # column
    y = torch.zeros_like(d)  # row
    s = 1
    while s < n:
        quadrant_x = (d // 2) & 1
        quadrant_y = (d ^ quadrant_x) & 1
        # In the lower-left and lower-right quadrants (quadrant_y == 0) the sub-curve is
        # transposed, and in the lower-right one also reflected.
        reflect = (quadrant_y == 0) & (quadrant_x == 1)
        x = torch.where(reflect, s - 1 - x, x)
        y = torch.where(reflect, s - 1 - y, y)
        x, y = torch.where(quadrant_y == 0, y, x), torch.where(quadrant_y == 0, x, y)
        x = x + s * quadrant_x
        y = y + s * quadrant_y
        d = d // 4
        s *= 2
    inside = (y < h) & (x < w)
    return y[inside] * w + x[inside]
