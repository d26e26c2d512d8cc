"""The chunkwise form of gated linear attention in pure PyTorch: log-space relative decays, secondary chunking."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.gla import gla_op
from ssmlab.ops.gla.reference import compute_dtype
from ssmlab.ops.scan.torch import linear_scan_chunked

# Positions per sub-chunk: the (SUB, SUB, K) tensor of relative decays is formed only inside sub-chunks;
# 8 was fastest in one forward run at L=4096, K=64, chunk 64 on a shared CPU (sub-chunk 4: 0.30 s, 8: 0.12 s,
# 16: 0.20 s, 32: 0.56 s).
SUB_CHUNK = 8


def _intra_chunk_scores(q, k, cumulative, sub):
    """``A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk)`` for j <= i inside each chunk, 0 above the diagonal.

    q, k, cumulative (G): (B, H, n, C, K) with C a multiple of ``sub``; returns (B, H, n, C, C).
    """
    chunk = q.shape[-2]
    blocks = chunk // sub
    qs, ks, gs = (rearrange(t, "... (m s) k -> ... m s k", s=sub) for t in (q, k, cumulative))  # (B, H, n, m, s, K)

    # Diagonal blocks: the relative decays themselves, the exponent -inf where j > i.
    ones = torch.ones(sub, sub, dtype=torch.bool, device=q.device)
    gaps = (gs[..., :, None, :] - gs[..., None, :, :]).masked_fill(~ones.tril()[..., None], float("-inf"))
    diagonal = torch.einsum("...ik,...jk,...ijk->...ij", qs, ks, torch.exp(gaps))  # (B, H, n, m, s, s)

    # Blocks a > b through r(a), the last position before block a: exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j).
    before = torch.cat([torch.zeros_like(gs[..., :1, -1, :]), gs[..., :-1, -1, :]], dim=-2)  # G_r, (B, H, n, m, K)
    q_rel = qs * torch.exp(gs - before[..., None, :])  # (B, H, n, m, s, K)
    earlier = torch.ones(blocks, blocks, dtype=torch.bool, device=q.device).tril(-1)  # b < a
    spans = (before[..., :, None, None, :] - gs[..., None, :, :, :]).masked_fill(
        ~earlier[..., None, None], float("-inf"))  # G_r(a) - G_j for j in block b, (B, H, n, m, m, s, K)
    k_rel = ks[..., None, :, :, :] * torch.exp(spans)
    scores = torch.einsum("...aik,...abjk->...aibj", q_rel, k_rel)  # (B, H, n, m, s, m, s)
    eye = torch.eye(blocks, dtype=q.dtype, device=q.device)
    scores = scores + torch.einsum("...aij,ab->...aibj", diagonal, eye)
    return rearrange(scores, "... a i b j -> ... (a i) (b j)")


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
    sub = SUB_CHUNK if chunk_size % SUB_CHUNK == 0 else chunk_size
    o = _intra_chunk_scores(q, k, cumulative, sub) @ v  # (B, H, n, C, V)

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
