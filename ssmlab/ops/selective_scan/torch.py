"""Chunked selective scan in pure PyTorch.

The sequence is cut into chunks of ``chunk_size`` positions. For one chunk the
discretised ``exp(delta A)`` and ``delta B u`` are built at once, (B, T, D, N),
the recurrence runs over the chunk's positions, and ``C`` contracts the states to
the outputs; only the state (B, D, N) is carried to the next chunk. Under
autograd each chunk is wrapped in activation checkpointing, so the backward pass
recomputes it instead of keeping (B, L, D, N) worth of intermediates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssmlab.ops.selective_scan import selective_scan_op
from ssmlab.ops.selective_scan.reference import compute_dtype, prepare_delta

DEFAULT_CHUNK = 64


def _as_groups(m: torch.Tensor) -> torch.Tensor:
    """(B, T, N) or (B, T, G, N) -> (B, T, G, 1, N)."""
    return (m[:, :, None] if m.dim() == 3 else m)[:, :, :, None, :]


def _chunk(u, delta, A, B, C, h):
    """One chunk: u, delta (B, T, D); B, C (B, T, [G,] N); h (B, D, N) -> y (B, T, D), h."""
    batch, length, channels = u.shape
    groups = 1 if B.dim() == 3 else B.shape[2]
    d_a = torch.exp(delta[..., None] * A)  # (B, T, D, N)
    d_bu = ((delta * u).reshape(batch, length, groups, channels // groups)[..., None] * _as_groups(B))
    d_bu = d_bu.reshape(batch, length, channels, -1)  # (B, T, D, N)
    states = []
    for t in range(length):
        h = d_a[:, t] * h + d_bu[:, t]
        states.append(h)
    hs = torch.stack(states, dim=1).reshape(batch, length, groups, channels // groups, -1)
    y = (hs * _as_groups(C)).sum(-1).reshape(batch, length, channels)
    return y, h


@selective_scan_op.register("torch", priority=10)
def selective_scan_chunked(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, chunk_size: int = DEFAULT_CHUNK):
    dtype = compute_dtype(u.dtype)
    batch, length, channels = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    uc, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    h = uc.new_zeros(batch, channels, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, h))
    ys = []
    for start in range(0, length, chunk_size):
        part = slice(start, start + chunk_size)
        args = (uc[:, part], delta[:, part], A, B[:, part], C[:, part], h)
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=1)
    if D is not None:
        y = y + D.to(dtype) * uc
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h
