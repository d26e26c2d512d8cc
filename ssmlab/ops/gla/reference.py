"""Gated linear attention one position at a time: the specification of ``gla``."""

from __future__ import annotations

import torch

from ssmlab.ops.gla import gla_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def step(q, k, v, log_decay, state, scale):
    """``S = diag(exp(g)) S + k v^T`` and ``o = scale S^T q`` for one position.

    q, k, log_decay (B, H, K); v (B, H, V); state (B, H, K, V).
    """
    dtype = compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    state = torch.exp(log_decay.to(dtype))[..., None] * state.to(dtype) + k[..., :, None] * v[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q, state)
    return o, state


@gla_op.register("reference", priority=0)
def gla_reference(q, k, v, log_decay, *, scale, chunk_size=64, initial_state=None):
    batch, length, heads, key_dim = q.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=compute_dtype(q.dtype)) \
        if initial_state is None else initial_state
    outputs = []
    for t in range(length):
        o, state = step(q[:, t], k[:, t], v[:, t], log_decay[:, t], state, scale)
        outputs.append(o)
    return torch.stack(outputs, dim=1).to(v.dtype), state
