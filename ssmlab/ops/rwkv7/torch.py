"""The chunkwise RWKV-7 recurrence in pure PyTorch: a WY/UT representation inside chunks, a loop over chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.rwkv7 import rwkv7_op
from ssmlab.ops.rwkv7.reference import compute_dtype


# Chunks are processed in groups of about this many elements per (C, max(C, K, V)) intermediate, as in the gated
# delta rule's and GLA's torch backends: one group for a short sequence, cache-sized groups for a large batch.
GROUP_ELEMENTS = 1 << 20


def chunk_groups(n_chunks: int, per_chunk: int):
    """Slices of at most ``GROUP_ELEMENTS // per_chunk`` (at least one) chunks covering ``range(n_chunks)``."""
    size = max(1, GROUP_ELEMENTS // per_chunk)
    return [slice(start, min(start + size, n_chunks)) for start in range(0, n_chunks, size)]


def _decayed_scores(x, y, row_log, col_log, diagonal):
    """``A[i, j] = sum_c x_ic y_jc exp(row_log_ic - col_log_jc)`` for j < i, ``diagonal * x_i . y_i`` on the
    diagonal, 0 above it, inside each chunk.

    ``col_log`` is the cumulative log-decay G and ``row_log`` is G or its shifted form G^- (G_{i-1}): both
    satisfy ``row_log_i - col_log_m <= 0`` for m < i. Built by halving: the chunk (padded at its end to a
    power of two with x = y = 0 and both logs at G_C) is split into two halves, the block of second-half rows
    and first-half columns is the matrix product of ``x_i exp(row_log_i - G_m)`` and ``y_j exp(G_m - G_j)``
    with m the last position of the first half (both factors <= 1), and each half is split the same way, down
    to single positions.

    x, row_log (..., C, K) and y, col_log (..., C, K), broadcastable in the leading dimensions; diagonal
    broadcastable to the leading dimensions followed by (1, 1, 1). Returns (..., C, C).
    """
    chunk = x.shape[-2]
    pad = (1 << (chunk - 1).bit_length()) - chunk
    if pad:
        # Padded positions come last: their rows and columns are cut off at the end.
        end = col_log[..., -1:, :]
        x, y = F.pad(x, (0, 0, 0, pad)), F.pad(y, (0, 0, 0, pad))
        row_log = torch.cat([row_log, end.expand(*row_log.shape[:-2], pad, -1)], dim=-2)
        col_log = torch.cat([col_log, end.expand(*col_log.shape[:-2], pad, -1)], dim=-2)
    scores = ((x * y).sum(-1) * diagonal[..., 0, 0])[..., None, None]  # single positions, (..., C, 1, 1)
    size = 1
    while scores.shape[-3] > 1:
        xs, ys, rows, cols = (rearrange(t, "... (p two s) k -> ... p two s k", two=2, s=size)
                              for t in (x, y, row_log, col_log))
        middle = cols[..., 0, -1:, :]  # G_m, (..., P, 1, K)
        x_rel = xs[..., 1, :, :] * torch.exp(rows[..., 1, :, :] - middle)  # (..., P, s, K)
        y_rel = ys[..., 0, :, :] * torch.exp(middle - cols[..., 0, :, :])
        lower = x_rel @ y_rel.transpose(-1, -2)  # (..., P, s, s)
        first, second = rearrange(scores, "... (p two) i j -> ... p two i j", two=2).unbind(-3)
        scores = torch.cat([torch.cat([first, torch.zeros_like(first)], dim=-1),
                            torch.cat([lower, second], dim=-1)], dim=-2)  # (..., P, 2s, 2s)
        size *= 2
    return scores[..., 0, :chunk, :chunk]


def _chunked(r, k, v, log_decay, a, b, scale, chunk_size, initial_state):
    batch, length, heads, key_dim = r.shape
    value_dim = v.shape[-1]
    pad = -length % chunk_size
    if pad:
        # Padded positions write nothing (k = v = b = 0) and do not decay (log_decay = 0).
        r, k, v, log_decay, a, b = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (r, k, v, log_decay, a, b))
    r, k, v, log_decay, a, b = (rearrange(t, "b (n c) h d -> b h n c d", c=chunk_size)
                                for t in (r * scale, k, v, log_decay, a, b))  # (B, H, n, C, .)
    eye = torch.eye(chunk_size, dtype=r.dtype, device=r.device)
    # Rows r (j <= i, diagonal included) and a (j < i); columns k and b.
    diagonal = torch.tensor([1.0, 0.0], dtype=r.dtype, device=r.device).view(2, 1, 1, 1, 1)

    state = r.new_zeros(batch, heads, key_dim, value_dim) if initial_state is None else initial_state
    outputs = []
    per_chunk = 4 * batch * heads * chunk_size * max(chunk_size, key_dim, value_dim)
    for group in chunk_groups(r.shape[2], per_chunk):
        r_g, k_g, v_g, a_g, b_g = (t[:, :, group] for t in (r, k, v, a, b))
        cumulative = log_decay[:, :, group].cumsum(dim=-2)  # G, (B, H, g, C, K)
        shifted = F.pad(cumulative[..., :-1, :], (0, 0, 1, 0))  # G^-: G_{i-1}, 0 at the chunk's start
        rows = torch.stack([r_g, a_g], dim=-3)[..., :, None, :, :]  # (B, H, g, 2, 1, C, K)
        row_logs = torch.stack([cumulative, shifted], dim=-3)[..., :, None, :, :]
        cols = torch.stack([k_g, b_g], dim=-3)[..., None, :, :, :]  # (B, H, g, 1, 2, C, K)
        scores = _decayed_scores(rows, cols, row_logs, cumulative[..., None, None, :, :], diagonal)
        (r_k, r_b), (a_k, a_b) = (pair.unbind(-3) for pair in scores.unbind(-4))  # each (B, H, g, C, C)
        # (I - A_ab) [U | W] = [A_ak V | a exp(G^-)]: then u = U + W S_0.
        rhs = torch.cat([a_k @ v_g, a_g * torch.exp(shifted)], dim=-1)
        solution = torch.linalg.solve_triangular(eye - a_b, rhs, upper=False, unitriangular=True)
        values, keys = solution.split([value_dim, key_dim], dim=-1)  # U (.., C, V), W (.., C, K)
        inside = r_k @ v_g  # (B, H, g, C, V)
        r_from_start = r_g * torch.exp(cumulative)  # (B, H, g, C, K)
        to_end = torch.exp(cumulative[..., -1:, :] - cumulative)  # exp(G_C - G), (B, H, g, C, K)
        written = (k_g * to_end).transpose(-1, -2) @ v_g  # (B, H, g, K, V)
        b_to_end = (b_g * to_end).transpose(-1, -2)  # (B, H, g, K, C)
        chunk_decay = torch.exp(cumulative[..., -1, :])[..., None]  # (B, H, g, K, 1)
        # The recurrence between chunks, one chunk at a time.
        for c in range(r_g.shape[2]):
            corrections = values[:, :, c] + keys[:, :, c] @ state  # u_i = S_{i-1}^T a_i, (B, H, C, V)
            outputs.append(inside[:, :, c] + r_from_start[:, :, c] @ state + r_b[:, :, c] @ corrections)
            state = chunk_decay[:, :, c] * state + written[:, :, c] + b_to_end[:, :, c] @ corrections
    o = rearrange(torch.stack(outputs, dim=2), "b h n c v -> b (n c) h v")[:, :length]
    return o, state


@rwkv7_op.register("torch", priority=10)
def rwkv7_torch(r, k, v, log_decay, a, b, *, scale, chunk_size=64, initial_state=None):
    dtype = compute_dtype(r.dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    o, state = _chunked(*(t.to(dtype) for t in (r, k, v, log_decay, a, b)), scale, min(chunk_size, r.shape[1]),
                        init)
    return o.to(v.dtype), state
