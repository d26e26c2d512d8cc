"""Chunked selective scan in pure PyTorch.

The sequence is cut into chunks of ``chunk_size`` positions. For one chunk the
discretised ``exp(delta A)`` and ``delta B u`` are built at once, (B, T, D, N),
the recurrence runs over the chunk's positions, and ``C`` contracts the states to
the outputs; only the state (B, D, N) is carried to the next chunk. Under
autograd, once the intermediates of the whole sequence would pass
``CHECKPOINT_BYTES`` (64 MiB), each chunk is wrapped in activation checkpointing,
so the backward pass recomputes it instead of keeping (B, L, D, N) worth of
intermediates; below that, keeping them is faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssmlab.ops.selective_scan import selective_scan_op
from ssmlab.ops.selective_scan.reference import compute_dtype, prepare_delta

DEFAULT_CHUNK = 16
# Below this many bytes of (B, L, D, N) intermediates, keeping them for backward is cheaper than
# recomputing each chunk; above it, chunks are checkpointed so training memory stays O(B L D).
CHECKPOINT_BYTES = 64 * 2**20


def _as_groups(m: torch.Tensor) -> torch.Tensor:
    """(B, T, N) or (B, T, G, N) -> (B, T, G, 1, N)."""
    return (m[:, :, None] if m.dim() == 3 else m)[:, :, :, None, :]


def _chunk(u, delta, A, B, C, h, D, z, delta_bias, delta_softplus):
    """One chunk: u, delta, z (B, T, D); B, C (B, T, [G,] N); h (B, D, N) -> y (B, T, D), h."""
    batch, length, channels = u.shape
    groups = 1 if B.dim() == 3 else B.shape[2]
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    d_a = torch.exp(delta[..., None] * A)  # (B, T, D, N)
    d_bu = ((delta * u).reshape(batch, length, groups, channels // groups)[..., None] * _as_groups(B))
    d_bu = d_bu.reshape(batch, length, channels, -1)  # (B, T, D, N)
    states = []
    # unbind, not d_a[:, t]: the backward of t-th slices would fill a full-size zero tensor each.
    for d_a_t, d_bu_t in zip(d_a.unbind(1), d_bu.unbind(1)):
        h = torch.addcmul(d_bu_t, d_a_t, h)
        states.append(h)
    hs = torch.stack(states, dim=1).reshape(batch, length, groups, channels // groups, -1)
    y = torch.matmul(hs, _as_groups(C).transpose(-1, -2)).reshape(batch, length, channels)
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


@selective_scan_op.register("torch", priority=10)
def selective_scan_chunked(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, chunk_size: int = DEFAULT_CHUNK):
    dtype = compute_dtype(u.dtype)
    batch, length, channels = u.shape
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    A, B, C, D, bias = cast(A), cast(B), cast(C), cast(D), cast(delta_bias)
    h = u.new_zeros(batch, channels, A.shape[1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, bias, h))
    recompute = grad and batch * length * channels * A.shape[1] * h.element_size() > CHECKPOINT_BYTES
    ys = []
    for start in range(0, length, chunk_size):
        part = slice(start, start + chunk_size)
        args = (u[:, part].to(dtype), delta[:, part], A, B[:, part], C[:, part], h, D,
                None if z is None else z[:, part].to(dtype), bias, delta_softplus)
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args)
        ys.append(y.to(u.dtype))
    return torch.cat(ys, dim=1), h
