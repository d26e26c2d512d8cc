"""A block-diagonal (headwise) linear map, as xLSTM's ``LinearHeadwiseExpand`` (arXiv 2405.04517).

The C input features are split into ``n_blocks`` blocks of C / n_blocks; each block is mapped by its
own (out / n_blocks, C / n_blocks) matrix, so the map costs C out / n_blocks parameters instead of
C out. The weight is laid out (n_blocks, out / n_blocks, C / n_blocks), as xLSTM's, so its
checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class HeadwiseLinear(nn.Module):
    """x (..., C) -> (..., out): ``n_blocks`` independent linear maps of C / n_blocks features each.

    Args:
        in_features: C, a multiple of ``n_blocks``.
        n_blocks: the number of blocks.
        out_features: a multiple of ``n_blocks`` (C when None).
        bias: an (out,) bias (False).

    The weight is initialised N(0, 2 / (5 C / n_blocks)), xLSTM's default (its "small init" over a
    block's width); a layer may re-initialise it.
    """

    def __init__(self, in_features: int, n_blocks: int, out_features: int | None = None, *, bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        if n_blocks < 1 or in_features % n_blocks or out_features % n_blocks:
            raise ValueError(f"HeadwiseLinear: in_features={in_features} and out_features={out_features} must be "
                             f"multiples of n_blocks={n_blocks}")
        self.n_blocks = n_blocks
        block_in = in_features // n_blocks
        self.weight = nn.Parameter(torch.empty(n_blocks, out_features // n_blocks, block_in, device=device,
                                               dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.normal_(self.weight, std=math.sqrt(2 / 5 / block_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "... (h d) -> ... h d", h=self.n_blocks)
        y = rearrange(torch.einsum("...hd,hod->...ho", x, self.weight), "... h o -> ... (h o)")
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"n_blocks={self.n_blocks}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}"
