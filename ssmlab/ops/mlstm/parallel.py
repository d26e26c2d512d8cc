"""The mLSTM's parallel (quadratic) form of arXiv 2405.04517 (its appendix), with an initial state."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.mlstm import mlstm_op
from ssmlab.ops.mlstm.reference import compute_dtype


@mlstm_op.register("parallel", priority=5)
def mlstm_parallel(q, k, v, i, f, *, scale, eps, chunk_size=64, initial_state=None):
    """All L x L interactions at once: ``D_tj = exp(b_t - b_j + i_j - m_t)`` for j <= t with
    ``b_t = sum_{r<=t} logsigmoid(f_r)``, and the initial state decayed by ``exp(b_t + m_0 - m_t)``;
    ``m_t`` is the largest of these log weights, so every exponent is <= 0. O(L^2) time and memory;
    ``chunk_size`` is ignored."""
    dtype, out_dtype = compute_dtype(q.dtype), v.dtype
    q, k, v, i = (t.to(dtype).transpose(1, 2) for t in (q, k, v, i))  # (B, H, L, .), i (B, H, L)
    q = q * scale
    cumulative = F.logsigmoid(f.to(dtype)).transpose(1, 2).cumsum(dim=-1)  # b_t, (B, H, L)
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_weights = (cumulative[..., :, None] - cumulative[..., None, :] + i[..., None, :]).masked_fill(
        ~causal, float("-inf"))  # (B, H, L, L)
    to_end = cumulative[..., -1:] - cumulative + i  # b_L - b_j + i_j, (B, H, L)
    stabilizer_t = log_weights.amax(dim=-1)  # (B, H, L)
    final_stabilizer = to_end.amax(dim=-1)  # (B, H)
    if initial_state is not None:
        memory, normalizer, stabilizer = (s.to(dtype) for s in initial_state)
        from_start = cumulative + stabilizer[..., None]  # b_t + m_0
        stabilizer_t = torch.maximum(stabilizer_t, from_start)
        final_stabilizer = torch.maximum(final_stabilizer, from_start[..., -1])
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_weights - stabilizer_t[..., None])  # (B, H, L, L)
    numerator, dot = scores @ v, scores.sum(dim=-1)  # (B, H, L, V), (B, H, L)
    weighted_k = k * torch.exp(to_end - final_stabilizer[..., None])[..., None]  # (B, H, L, K)
    new_memory, new_normalizer = weighted_k.transpose(-1, -2) @ v, weighted_k.sum(dim=-2)
    if initial_state is not None:
        decay = torch.exp(from_start - stabilizer_t)  # (B, H, L)
        numerator = numerator + decay[..., None] * (q @ memory)
        dot = dot + decay * (q @ normalizer[..., None])[..., 0]
        final_decay = torch.exp(from_start[..., -1] - final_stabilizer)[..., None]  # (B, H, 1)
        new_memory = new_memory + final_decay[..., None] * memory
        new_normalizer = new_normalizer + final_decay * normalizer
    h = numerator / (torch.maximum(dot.abs(), torch.exp(-stabilizer_t)) + eps)[..., None]
    return h.transpose(1, 2).to(out_dtype), (new_memory, new_normalizer, final_stabilizer)
