"""The chunkwise form of gated linear attention in pure PyTorch: relative decays in log space, by halving."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.gla import gla_op
from ssmlab.ops.gla.reference import compute_dtype


# Chunks are processed in groups of about this many elements per (C, max(C, K, V)) intermediate, as in
# the gated delta rule's torch backend: one group for a short sequence, cache-sized groups for a large batch.
GROUP_ELEMENTS = 1 << 20


def chunk_groups(n_chunks: int, per_chunk: int):
    """Slices of at most ``GROUP_ELEMENTS // per_chunk`` (at least one) chunks covering ``range(n_chunks)``."""
    size = max(1, GROUP_ELEMENTS // per_chunk)
    return [slice(start, min(start + size, n_chunks)) for start in range(0, n_chunks, size)]


def _intra_chunk_scores(q, k, cumulative):
    """``A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk)`` for j <= i inside each chunk, 0 above the diagonal.

    Built by halving: the chunk (padded at its end to a power of two) is split into two halves, the
    block of the second half's rows and the first half's columns is a matrix product of
    ``q_i exp(G_i - G_r)`` and ``k_j exp(G_r - G_j)`` with ``r`` the last position of the first half
    (both factors <= 1, as i > r >= j), and each half is split the same way, down to single positions.

    q, k, cumulative (G): (B, H, n, C, K); returns (B, H, n, C, C).
    """
    chunk = q.shape[-2]
    pad = (1 << (chunk - 1).bit_length()) - chunk
    if pad:
        # Padded positions come last: their rows and columns are cut off at the end.
        q, k = F.pad(q, (0, 0, 0, pad)), F.pad(k, (0, 0, 0, pad))
        cumulative = torch.cat([cumulative, cumulative[..., -1:, :].expand(*cumulative.shape[:-2], pad, -1)], dim=-2)
    scores = (q * k).sum(-1)[..., None, None]  # the blocks of single positions, (B, H, n, C, 1, 1)
    size = 1
    while scores.shape[-3] > 1:
        qs, ks, gs = (rearrange(t, "... (p two s) k -> ... p two s k", two=2, s=size) for t in (q, k, cumulative))
        last = gs[..., 0, -1:, :]  # G_r, (B, H, n, P, 1, K)
        q_rel = qs[..., 1, :, :] * torch.exp(gs[..., 1, :, :] - last)  # (B, H, n, P, s, K)
        k_rel = ks[..., 0, :, :] * torch.exp(last - gs[..., 0, :, :])
        lower = q_rel @ k_rel.transpose(-1, -2)  # (B, H, n, P, s, s)
        first, second = rearrange(scores, "... (p two) i j -> ... p two i j", two=2).unbind(-3)
        scores = torch.cat([torch.cat([first, torch.zeros_like(first)], dim=-1),
                            torch.cat([lower, second], dim=-1)], dim=-2)  # (B, H, n, P, 2s, 2s)
        size *= 2
    return scores[..., 0, :chunk, :chunk]


def _chunked(q, k, v, log_decay, scale, chunk_size, initial_state):
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    pad = -length % chunk_size
    if pad:
        # Padded positions write nothing (k = v = 0) and do not decay (g = 0).
        q, k, v, log_decay = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, log_decay))
    q, k, v, log_decay = (rearrange(t, "b (n c) h d -> b h n c d", c=chunk_size)
                          for t in (q * scale, k, v, log_decay))  # (B, H, n, C, .)

    state = q.new_zeros(batch, heads, key_dim, value_dim) if initial_state is None else initial_state
    outputs = []
    for group in chunk_groups(q.shape[2], batch * heads * chunk_size * max(chunk_size, key_dim, value_dim)):
        q_g, k_g, v_g = q[:, :, group], k[:, :, group], v[:, :, group]
        cumulative = log_decay[:, :, group].cumsum(dim=-2)  # G, (B, H, g, C, K)
        last = cumulative[..., -1:, :]  # G_C, (B, H, g, 1, K)
        inside = _intra_chunk_scores(q_g, k_g, cumulative) @ v_g  # from a zero state, (B, H, g, C, V)
        q_from_start = q_g * torch.exp(cumulative)  # (B, H, g, C, K)
        written = (k_g * torch.exp(last - cumulative)).transpose(-1, -2) @ v_g  # decayed to the end, (B, H, g, K, V)
        chunk_decay = torch.exp(last).transpose(-1, -2)  # (B, H, g, K, 1)
        # The memory passed between chunks, one chunk at a time, and read through the decay since the chunk's start.
        for c in range(q_g.shape[2]):
            outputs.append(inside[:, :, c] + q_from_start[:, :, c] @ state)
            state = chunk_decay[:, :, c] * state + written[:, :, c]
    o = rearrange(torch.stack(outputs, dim=2), "b h n c v -> b (n c) h v")[:, :length]
    return o, state


@gla_op.register("torch", priority=10)
def gla_torch(q, k, v, log_decay, *, scale, chunk_size=64, initial_state=None):
    dtype = compute_dtype(q.dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    o, state = _chunked(q.to(dtype), k.to(dtype), v.to(dtype), log_decay.to(dtype), scale,
                        min(chunk_size, q.shape[1]), init)
    return o.to(v.dtype), state
