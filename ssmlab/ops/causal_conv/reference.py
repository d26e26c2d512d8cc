"""The sum over the taps: the specification of ``causal_conv``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.causal_conv import causal_conv_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float32 at least, float64 when given float64."""
    return torch.promote_types(dtype, torch.float32)


def with_state(x: torch.Tensor, state: torch.Tensor | None, width: int) -> torch.Tensor:
    """x (B, L, D) preceded by the state's K - 1 inputs (zeros when None): (B, K - 1 + L, D) in x's dtype."""
    if state is None:
        state = x.new_zeros(x.shape[0], x.shape[2], width - 1)
    return torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)


def activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def step(x, weight, state, bias, activation):
    dtype = compute_dtype(x.dtype)
    full = torch.cat([state.to(x.dtype), x[..., None]], dim=-1)  # (B, D, K)
    y = (full.to(dtype) * weight.to(dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(dtype)
    return activate(y, activation).to(x.dtype), full[..., 1:]


@causal_conv_op.register("reference", priority=0)
def causal_conv_reference(x, weight, bias=None, *, activation=None, initial_state=None):
    batch, length, channels = x.shape
    width = weight.shape[1]
    dtype = compute_dtype(x.dtype)
    full = with_state(x, initial_state, width)  # (B, K - 1 + L, D)
    xs, w = full.to(dtype), weight.to(dtype)
    y = torch.zeros(batch, length, channels, dtype=dtype, device=x.device) if bias is None \
        else bias.to(dtype).expand(batch, length, channels)
    for j in range(width):
        y = y + w[:, j] * xs[:, j:j + length]
    return activate(y, activation).to(x.dtype), full[:, length:].transpose(1, 2)
