"""The chunkwise form of gated linear attention in pure PyTorch: relative decays in log space, by halving."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.gla import gla_op
from ssmlab.ops.gla.reference import compute_dtype
from ssmlab.ops.scan.torch import linear_scan_chunked


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
    pad = -length % chunk_size
    if pad:
        # Padded positions write nothing (k = v = 0) and do not decay (g = 0).
        q, k, v, log_decay = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, log_decay))
    q, k, v, log_decay = (rearrange(t, "b (n c) h d -> b h n c d", c=chunk_size)
                          for t in (q * scale, k, v, log_decay))  # (B, H, n, C, .)
    cumulative = log_decay.cumsum(dim=-2)  # G, (B, H, n, C, K)
    last = cumulative[..., -1:, :]  # G_C, (B, H, n, 1, K)

    # 1. Inside each chunk, from a zero state.
    o = _intra_chunk_scores(q, k, cumulative) @ v  # (B, H, n, C, V)

    # 2. The memory each chunk writes on its own, decayed to the chunk's end.
    written = (k * torch.exp(last - cumulative)).transpose(-1, -2) @ v  # (B, H, n, K, V)

    # 3. Between chunks: S_c = exp(G_C) S_{c-1} + written_c, a linear scan over the chunks.
    decay = torch.exp(last).transpose(-1, -2).expand_as(written)  # (B, H, n, K, V)
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1]) if initial_state is None else initial_state
    after = linear_scan_chunked(decay.transpose(1, 2), written.transpose(1, 2), state).transpose(1, 2)
    entering = torch.cat([state[:, :, None], after[:, :, :-1]], dim=2)  # (B, H, n, K, V)

    # 4. The entering memory, read by each position through its decay since the chunk's start.
    o = o + (q * torch.exp(cumulative)) @ entering
    return rearrange(o, "b h n c v -> b (n c) h v")[:, :length], after[:, :, -1]


@gla_op.register("torch", priority=10)
def gla_torch(q, k, v, log_decay, *, scale, chunk_size=64, initial_state=None):
    dtype = compute_dtype(q.dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    o, state = _chunked(q.to(dtype), k.to(dtype), v.to(dtype), log_decay.to(dtype), scale,
                        min(chunk_size, q.shape[1]), init)
    return o.to(v.dtype), state
