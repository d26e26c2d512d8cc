"""Position-wise feed-forward layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedMLP(nn.Module):
    """SwiGLU feed-forward block (arXiv 2002.05202): ``W2 (silu(W1 x) * W3 x)``.

    ``hidden`` defaults to ``8/3 * d_model`` rounded up to a multiple of 8, which keeps
    the parameter count of a 4x ungated MLP.
    """

    def __init__(self, d_model: int, hidden: int | None = None, *, bias: bool = False, device=None, dtype=None):
        super().__init__()
        hidden = hidden or 8 * ((8 * d_model // 3 + 7) // 8)
        factory = {"device": device, "dtype": dtype}
        self.fc_in = nn.Linear(d_model, 2 * hidden, bias=bias, **factory)
        self.fc_out = nn.Linear(hidden, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc_in(x).chunk(2, dim=-1)
        return self.fc_out(F.silu(gate) * value)


class GELUGLUOutput(nn.Module):
    """The output stage of S4-style layers (arXiv 2111.00396, 2206.11893):
    ``GLU(W dropout(GELU(y)))`` with W: D -> 2D; with ``glu=False``, ``W dropout(GELU(y))``
    with W: D -> D (the "postact=None" output of the S4 family's code, which DSS and LSSL use)."""

    def __init__(self, d_model: int, dropout: float = 0.0, *, glu: bool = True, device=None, dtype=None):
        super().__init__()
        self.glu = glu
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, (2 if glu else 1) * d_model, device=device, dtype=dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self.output_linear(self.dropout(F.gelu(y)))
        return F.glu(out, dim=-1) if self.glu else out
