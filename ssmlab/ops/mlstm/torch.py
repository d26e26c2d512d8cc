"""The chunkwise mLSTM in pure PyTorch: the stabilised quadratic form inside chunks, a loop over chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.mlstm import mlstm_op
from ssmlab.ops.mlstm.reference import compute_dtype, empty_state

# Chunks are processed in groups of about this many elements per (C, max(C, K, V)) intermediate, as in the
# gated delta rule's torch backend: a short sequence is one group, a long one keeps its intermediates in cache.
GROUP_ELEMENTS = 1 << 20


def chunk_groups(n_chunks: int, per_chunk: int):
    """Slices of at most ``GROUP_ELEMENTS // per_chunk`` (at least one) chunks covering ``range(n_chunks)``."""
    size = max(1, GROUP_ELEMENTS // per_chunk)
    return [slice(start, min(start + size, n_chunks)) for start in range(0, n_chunks, size)]


def _group(q, k, v, i, cumulative, causal, eps, state):
    """The outputs of a group of g chunks and the state after them: q, k (B, H, g, C, K), v (B, H, g, C, V),
    i and the within-chunk cumulative log forget gates b (B, H, g, C), the state entering the group."""
    # Within each chunk: log weights D_tj = b_t - b_j + i_j (j <= t), stabilised by their row maxima.
    log_weights = (cumulative[..., :, None] - cumulative[..., None, :] + i[..., None, :]).masked_fill(
        ~causal, float("-inf"))  # (B, H, g, C, C)
    intra_max = log_weights.amax(dim=-1)  # (B, H, g, C)
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_weights - intra_max[..., None])  # (B, H, g, C, C)
    intra_numerator = scores @ v  # (B, H, g, C, V)
    intra_denominator = scores.sum(dim=-1)  # (B, H, g, C)

    # Each chunk's own contribution to the state at its end, stabilised by its maximum a_max.
    to_end = cumulative[..., -1:] - cumulative + i  # a_j = b_C - b_j + i_j, (B, H, g, C)
    to_end_max = to_end.amax(dim=-1)  # (B, H, g)
    weighted_k = k * torch.exp(to_end - to_end_max[..., None])[..., None]  # (B, H, g, C, K)
    chunk_memory = weighted_k.transpose(-1, -2) @ v  # (B, H, g, K, V)
    chunk_normalizer = weighted_k.sum(dim=-2)  # (B, H, g, K)
    chunk_decay = cumulative[..., -1]  # (B, H, g)

    memory, normalizer, stabilizer = state
    entering = []
    for c in range(q.shape[2]):
        entering.append((memory, normalizer, stabilizer))
        new_stabilizer = torch.maximum(chunk_decay[:, :, c] + stabilizer, to_end_max[:, :, c])  # (B, H)
        old = torch.exp(chunk_decay[:, :, c] + stabilizer - new_stabilizer)
        new = torch.exp(to_end_max[:, :, c] - new_stabilizer)
        memory = old[..., None, None] * memory + new[..., None, None] * chunk_memory[:, :, c]
        normalizer = old[..., None] * normalizer + new[..., None] * chunk_normalizer[:, :, c]
        stabilizer = new_stabilizer
    memories, normalizers, stabilizers = (torch.stack(s, dim=2) for s in zip(*entering))  # (B, H, g, ...)

    # m_t = max(b_t + m_chunk, max_j D_tj): the recurrence's stabiliser, unrolled.
    from_start = cumulative + stabilizers[..., None]  # (B, H, g, C)
    stabilizer_t = torch.maximum(from_start, intra_max)
    inter = torch.exp(from_start - stabilizer_t)
    intra = torch.exp(intra_max - stabilizer_t)
    numerator = inter[..., None] * (q @ memories) + intra[..., None] * intra_numerator  # (B, H, g, C, V)
    dot = inter * (q @ normalizers[..., None])[..., 0] + intra * intra_denominator  # (B, H, g, C)
    denominator = torch.maximum(dot.abs(), torch.exp(-stabilizer_t)) + eps
    return numerator / denominator[..., None], (memory, normalizer, stabilizer)


def _chunked(q, k, v, i, log_f, scale, eps, chunk_size, initial_state):
    batch, length, heads, key_dim = q.shape
    pad = -length % chunk_size
    if pad:
        # Padded positions write nothing (i = -inf) and do not forget (log f = 0); every chunk keeps a real position.
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        i, log_f = F.pad(i, (0, 0, 0, pad), value=float("-inf")), F.pad(log_f, (0, 0, 0, pad))
    q, k, v = (rearrange(t, "b (n c) h d -> b h n c d", c=chunk_size) for t in (q * scale, k, v))  # (B, H, N, C, .)
    i, log_f = (rearrange(t, "b (n c) h -> b h n c", c=chunk_size) for t in (i, log_f))  # (B, H, N, C)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    state, outputs = initial_state, []
    for group in chunk_groups(q.shape[2], batch * heads * chunk_size * max(chunk_size, key_dim, v.shape[-1])):
        h, state = _group(q[:, :, group], k[:, :, group], v[:, :, group], i[:, :, group],
                          log_f[:, :, group].cumsum(dim=-1), causal, eps, state)
        outputs.append(h)
    h = rearrange(torch.cat(outputs, dim=2), "b h n c v -> b (n c) h v")[:, :length]
    return h, state


@mlstm_op.register("torch", priority=10)
def mlstm_torch(q, k, v, i, f, *, scale, eps, chunk_size=64, initial_state=None):
    dtype = compute_dtype(q.dtype)
    batch, length, heads, key_dim = q.shape
    state = empty_state(batch, heads, key_dim, v.shape[-1], dtype=dtype, device=q.device) \
        if initial_state is None else tuple(s.to(dtype) for s in initial_state)
    h, state = _chunked(q.to(dtype), k.to(dtype), v.to(dtype), i.to(dtype), F.logsigmoid(f.to(dtype)), scale, eps,
                        min(chunk_size, length), state)
    return h.to(v.dtype), state
