"""The recurrence, one position at a time: the specification of ``linear_attention``."""

from __future__ import annotations

import torch

from ssmlab.ops.linear_attention import linear_attention_op


def step(q, k, v, state, log_decay=None):
    """``S = gamma S + k^T v``, ``y = q S``: q, k (B, H, K); v (B, H, V); state (B, H, K, V); log_decay (H,)."""
    if log_decay is not None:
        state = torch.exp(log_decay)[:, None, None] * state
    state = state + k[..., :, None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


@linear_attention_op.register("reference", priority=0)
def linear_attention_reference(q, k, v, *, log_decay=None, initial_state=None, chunk_size=64):
    batch, _, heads, key_dim = q.shape
    if initial_state is None:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        initial_state = q.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=dtype)
    state, ys = initial_state, []
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1)):
        y, state = step(q_t, k_t, v_t, state, log_decay)
        ys.append(y)
    return torch.stack(ys, dim=1), state
