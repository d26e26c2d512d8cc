"""RWKV-7 one position at a time: the specification of ``rwkv7``."""

from __future__ import annotations

import torch

from ssmlab.ops.rwkv7 import rwkv7_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def step(r, k, v, log_decay, a, b, state, scale):
    """``S = (diag(w) + b a^T) S + k v^T`` and ``o = scale S^T r`` for one position.

    r, k, log_decay, a, b (B, H, K); v (B, H, V); state (B, H, K, V).
    """
    dtype = compute_dtype(r.dtype)
    r, k, v, log_decay, a, b = (t.to(dtype) for t in (r, k, v, log_decay, a, b))
    state = state.to(dtype)
    retrieved = torch.einsum("bhk,bhkv->bhv", a, state)  # a^T S, (B, H, V)
    state = (torch.exp(log_decay)[..., None] * state + b[..., :, None] * retrieved[..., None, :]
             + k[..., :, None] * v[..., None, :])
    o = scale * torch.einsum("bhk,bhkv->bhv", r, state)
    return o, state


@rwkv7_op.register("reference", priority=0)
def rwkv7_reference(r, k, v, log_decay, a, b, *, scale, chunk_size=64, initial_state=None):
    batch, length, heads, key_dim = r.shape
    state = r.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=compute_dtype(r.dtype)) \
        if initial_state is None else initial_state
    outputs = []
    for t in range(length):
        o, state = step(r[:, t], k[:, t], v[:, t], log_decay[:, t], a[:, t], b[:, t], state, scale)
        outputs.append(o)
    return torch.stack(outputs, dim=1).to(v.dtype), state
