"""Cross-scan: a causal mixer run over an image in four directions (VMamba's SS2D, arXiv 2401.10166).

A causal mixer over a raster scan lets a patch see only the patches above it and
to its left in the same row. VMamba's 2-D selective scan (SS2D) reads the patch
grid in four orders, rows and columns each forwards and backwards, runs one
selective scan per order and sums the four outputs, put back in row order, so that
every patch sees every other through at least one direction.

Here each direction is a whole copy of any registered causal mixer (its own
parameters, as VMamba keeps its own SSM parameters per direction), or one copy
shared by the four (``shared=True``). VMamba itself shares the input projection,
depthwise convolution and output projection of the block between the directions
and keeps four sets of SSM parameters only; with ``mixer="mamba"`` this wrapper is
the variant that keeps four whole Mamba blocks. VMamba's convolution is one 3 x 3
depthwise 2-D convolution over the grid before the scans, and its summed output goes
through a LayerNorm before the gate; here each direction has its own causal 1-D
convolution along its scan order, and there is no output norm.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmlab import registry
from ssmlab.layers.scan import inverse_permutation, scan_order
from ssmlab.mixers.base import Mixer
from ssmlab.registry import register

DIRECTIONS = ("row", "row reversed", "column", "column reversed")


def cross_scan_orders(h: int, w: int) -> torch.Tensor:
    """(4, h * w): the row-major indices in VMamba's four scan orders, in the order of ``DIRECTIONS``."""
    row, column = scan_order("row", h, w), scan_order("column", h, w)
    return torch.stack([row, row.flip(0), column, column.flip(0)])


@register("mixer", "cross-scan", description="VMamba cross-scan (SS2D): a causal mixer over 4 scan directions, summed",
          paper="2401.10166", inputs="image")
class CrossScan(Mixer):
    """Four scans of a ``(H, W)`` grid by a causal mixer, summed: ``(B, H * W, D) -> (B, H * W, D)``.

    ``y = sum_k unscan_k(mixer_k(scan_k(x)))`` over the scans ``k`` of ``DIRECTIONS``
    (rows, rows reversed, columns, columns reversed), with ``x`` and ``y`` in row-major order.

    Args:
        d_model: width D.
        mixer: the registered causal mixer run along each direction (default "mamba").
        image_shape: the grid (H, W); inputs have H * W positions. Required.
        shared: one copy of the mixer for all four directions instead of one per
            direction (default False, as VMamba).
        **options: passed to every copy of the mixer.

    The output at a patch depends on the whole image, so the mixer is not causal, has
    no recurrent step and takes no ``lengths`` (an image has no padding).
    """

    causal = False

    def __init__(self, d_model: int, mixer: str = "mamba", image_shape: tuple[int, int] | None = None, *,
                 shared: bool = False, device=None, dtype=None, **options):
        super().__init__(d_model, device=device, dtype=dtype)
        if image_shape is None or len(image_shape) != 2 or not all(isinstance(n, int) and n >= 1 for n in image_shape):
            raise ValueError(f"{self.registry_name}: image_shape=(H, W) of positive ints is required, got "
                             f"{image_shape!r}")
        cls = registry.get("mixer", mixer).obj
        copies = [cls(d_model, **options, device=device, dtype=dtype) for _ in range(1 if shared else 4)]
        if not copies[0].causal:
            raise ValueError(f"{self.registry_name}: the wrapped mixer {mixer!r} must be causal")
        self.inner, self.shared, self.image_shape = mixer, bool(shared), tuple(image_shape)
        self.mixers = nn.ModuleList(copies)
        orders = cross_scan_orders(*self.image_shape)
        self.register_buffer("orders", orders, persistent=False)  # (4, H * W)
        self.register_buffer("inverses", torch.stack([inverse_permutation(o) for o in orders]), persistent=False)

    def _forward(self, x, state, return_state):
        h, w = self.image_shape
        if x.shape[1] != h * w:
            raise ValueError(f"{self.registry_name}: x must have shape (B, H*W={h * w}, D={self.d_model}) for "
                             f"image_shape {self.image_shape}, got {tuple(x.shape)}")
        batch = x.shape[0]
        scans = x[:, self.orders]  # (B, 4, H * W, D)
        if self.shared:
            ys = self.mixers[0](scans.transpose(0, 1).reshape(4 * batch, h * w, -1)).view(4, batch, h * w, -1)
        else:
            ys = torch.stack([m(scans[:, k]) for k, m in enumerate(self.mixers)])  # (4, B, H * W, D)
        return sum(ys[k][:, self.inverses[k]] for k in range(4)), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixer={self.inner!r}, image_shape={self.image_shape}, shared={self.shared}"
