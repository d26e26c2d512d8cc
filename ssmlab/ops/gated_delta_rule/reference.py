"""The gated delta rule one position at a time: the specification of ``gated_delta_rule``."""

from __future__ import annotations

import torch

from ssmlab.ops.gated_delta_rule import gated_delta_rule_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def step(q, k, v, beta, log_alpha, state, scale):
    """``S = alpha (I - beta k k^T) S + beta k v^T`` and ``o = scale S^T q`` for one position.

    q, k (B, H, K); v (B, H, V); beta (B, H); log_alpha (B, H) or None; state (B, H, K, V).
    """
    dtype = compute_dtype(q.dtype)
    q, k, v, beta = q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype)[..., None, None]
    state = state.to(dtype)
    retrieved = torch.einsum("bhk,bhkv->bhv", k, state)  # k^T S, (B, H, V)
    state = state - beta * k[..., :, None] * retrieved[..., None, :]  # (I - beta k k^T) S
    if log_alpha is not None:
        state = torch.exp(log_alpha.to(dtype))[..., None, None] * state
    state = state + beta * k[..., :, None] * v[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q, state)
    return o, state


@gated_delta_rule_op.register("reference", priority=0)
def gated_delta_rule_reference(q, k, v, beta, log_alpha, *, scale, chunk_size=64, initial_state=None):
    batch, length, heads, key_dim = q.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=compute_dtype(q.dtype)) \
        if initial_state is None else initial_state
    outputs = []
    for t in range(length):
        o, state = step(q[:, t], k[:, t], v[:, t], beta[:, t], None if log_alpha is None else log_alpha[:, t],
                        state, scale)
        outputs.append(o)
    return torch.stack(outputs, dim=1).to(v.dtype), state
