"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (arXiv 1910.07467): ``x / rms(x) * weight``, computed in float32 or wider."""

    def __init__(self, d_model: int, eps: float = 1e-5, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        if x.dtype == compute == self.weight.dtype:  # one fused kernel, the same arithmetic
            return torch.nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = x.to(compute)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(compute)).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * silu(z))`` normalised over groups of ``group_size`` channels, the output
    norm of Mamba-2 (arXiv 2405.21060, "norm before gate = False"); one group by default."""

    def __init__(self, d_model: int, group_size: int | None = None, eps: float = 1e-5, *, device=None, dtype=None):
        super().__init__()
        group_size = group_size or d_model
        if d_model % group_size:
            raise ValueError(f"group_size {group_size} must divide d_model {d_model}")
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        h = x.to(compute) * torch.nn.functional.silu(z.to(compute))
        g = h.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight.to(compute)).to(x.dtype)
