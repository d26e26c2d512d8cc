"""WKV in ``O(sqrt L)`` sequential steps: a recurrence inside chunks of about ``sqrt L``
positions, run for all chunks at once, then one across chunks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmlab.ops.wkv import wkv_op
from ssmlab.ops.wkv.reference import combine, empty_state, output


@wkv_op.register("torch", priority=10)
def wkv_chunked(k, v, w, u, *, initial_state=None):
    length = k.shape[1]
    state = empty_state(k[:, 0]) if initial_state is None else initial_state
    a0, b0, p0 = state
    size = math.isqrt(length - 1) + 1  # ceil(sqrt(L)): about as many chunks as positions per chunk
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    kc = F.pad(k, (0, 0, 0, pad)).unflatten(1, (n_chunks, size))  # (B, n, C, D)
    vc = F.pad(v, (0, 0, 0, pad)).unflatten(1, (n_chunks, size))
    ones = torch.ones_like(kc[:, :, 0])
    # Inclusive sums inside each chunk, all chunks at once: C sequential steps.
    local = [(vc[:, :, 0], ones, kc[:, :, 0])]
    for j in range(1, size):
        a, b, p = local[-1]
        local.append(combine(a, b, p - w, vc[:, :, j], ones, kc[:, :, j]))
    la, lb, lp = (torch.stack(parts, dim=2) for parts in zip(*local))  # (B, n, C, D)
    # The state entering each chunk: n sequential steps.
    entries = [(a0, b0, p0)]
    for c in range(n_chunks - 1):
        a, b, p = entries[-1]
        entries.append(combine(a, b, p - size * w, la[:, c, -1], lb[:, c, -1], lp[:, c, -1]))
    ea, eb, ep = (torch.stack(parts, dim=1)[:, :, None] for parts in zip(*entries))  # (B, n, 1, D)
    # Inclusive sums up to every position: the entry state decayed by j + 1 steps, plus the chunk's.
    steps = torch.arange(1, size + 1, device=k.device, dtype=k.dtype)[:, None]  # (C, 1)
    ga, gb, gp = (t.flatten(1, 2)[:, :length] for t in combine(ea, eb, ep - steps * w, la, lb, lp))  # (B, L, D)
    # The state before each position.
    before = [torch.cat([s[:, None], g[:, :-1]], dim=1) for s, g in zip(state, (ga, gb, gp))]
    out = output(*before, k, v, u)
    return out, (ga[:, -1], gb[:, -1], gp[:, -1])
