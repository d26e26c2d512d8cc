"""The mLSTM one position at a time: the specification of ``mlstm``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.mlstm import mlstm_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def empty_state(batch: int, heads: int, key_dim: int, value_dim: int, *, dtype, device):
    """The empty memory: ``C = 0`` (B, H, K, V), ``n = 0`` (B, H, K) and ``m = -inf`` (B, H)."""
    return (torch.zeros(batch, heads, key_dim, value_dim, dtype=dtype, device=device),
            torch.zeros(batch, heads, key_dim, dtype=dtype, device=device),
            torch.full((batch, heads), float("-inf"), dtype=dtype, device=device))


def step(q, k, v, i, f, state, scale, eps):
    """One position of the stabilised recurrence (see the package docstring).

    q, k (B, H, K); v (B, H, V); i, f (B, H); state (C (B, H, K, V), n (B, H, K), m (B, H)).
    """
    dtype = compute_dtype(q.dtype)
    q, k, v, i = q.to(dtype) * scale, k.to(dtype), v.to(dtype), i.to(dtype)
    memory, normalizer, stabilizer = (s.to(dtype) for s in state)
    log_f = F.logsigmoid(f.to(dtype))  # (B, H)
    new_stabilizer = torch.maximum(log_f + stabilizer, i)
    forget = torch.exp(log_f + stabilizer - new_stabilizer)  # (B, H)
    write = torch.exp(i - new_stabilizer)
    memory = forget[..., None, None] * memory + write[..., None, None] * k[..., :, None] * v[..., None, :]
    normalizer = forget[..., None] * normalizer + write[..., None] * k
    numerator = torch.einsum("bhk,bhkv->bhv", q, memory)
    denominator = torch.maximum((q * normalizer).sum(-1).abs(), torch.exp(-new_stabilizer)) + eps  # (B, H)
    return numerator / denominator[..., None], (memory, normalizer, new_stabilizer)


@mlstm_op.register("reference", priority=0)
def mlstm_reference(q, k, v, i, f, *, scale, eps, chunk_size=64, initial_state=None):
    batch, length, heads, key_dim = q.shape
    state = empty_state(batch, heads, key_dim, v.shape[-1], dtype=compute_dtype(q.dtype), device=q.device) \
        if initial_state is None else initial_state
    outputs = []
    for t in range(length):
        h, state = step(q[:, t], k[:, t], v[:, t], i[:, t], f[:, t], state, scale, eps)
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(v.dtype), state
