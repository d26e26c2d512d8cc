"""The quadratic (masked attention-like) and chunked forms of SSD in pure PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.scan import linear_scan
from ssmlab.ops.ssd import ssd_op
from ssmlab.ops.ssd.reference import compute_dtype, skip


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """``S[..., t, s] = sum_{s < r <= t} a[..., r]`` for s <= t and -inf above the diagonal.

    Built by masked cumulative sums rather than as a difference of prefix sums, so
    it keeps full precision when the prefix sums are large.
    """
    length = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, length)  # rows[..., r, s] = a_r
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    sums = rows.masked_fill(~strictly_lower, 0.0).cumsum(dim=-2)
    return sums.masked_fill(~strictly_lower.logical_or(torch.eye(length, dtype=torch.bool, device=a.device)),
                            float("-inf"))


def _split_heads(x, dt, B, C):
    """Group the heads: x (B, L, G, H/G, P), dt (B, L, G, H/G), B, C (B, L, G, N)."""
    groups = B.shape[2]
    return (rearrange(x, "b l (g k) p -> b l g k p", g=groups), rearrange(dt, "b l (g k) -> b l g k", g=groups))


def _chunked(x, dt, A, B, C, chunk_size, initial_state):
    """Block decomposition over chunks of length T (L padded to a multiple of T with dt = 0)."""
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    pad = -length % chunk_size
    if pad:
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    xg, dtg = _split_heads(x, dt, B, C)
    xg = rearrange(xg, "b (c t) g k p -> b c t g k p", t=chunk_size)
    dtg = rearrange(dtg, "b (c t) g k -> b c g k t", t=chunk_size)
    Bc = rearrange(B, "b (c t) g n -> b c t g n", t=chunk_size)
    Cc = rearrange(C, "b (c t) g n -> b c t g n", t=chunk_size)
    a = dtg * rearrange(A, "(g k) -> g k 1", g=groups)  # (B, c, G, K, T) log-decays
    a_cum = a.cumsum(dim=-1)

    # 1. Inside each chunk: the quadratic form.
    scores = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)  # (B, c, G, T, T)
    weights = scores[:, :, :, None] * torch.exp(segment_sum(a)) * dtg[..., None, :]  # (B, c, G, K, T, S)
    y = torch.einsum("bcgkts,bcsgkp->bctgkp", weights, xg)

    # 2. The state each chunk produces on its own (from a zero state).
    to_end = torch.exp(a_cum[..., -1:] - a_cum) * dtg  # (B, c, G, K, T)
    chunk_states = torch.einsum("bctgn,bcgkt,bctgkp->bcgkpn", Bc, to_end, xg)

    if chunk_states.shape[1] == 1 and initial_state is None:
        # One chunk from a zero state (short sequences): its own state is the final one and nothing enters it.
        y = rearrange(y, "b c t g k p -> b (c t) (g k) p")[:, :length]
        return y, rearrange(chunk_states[:, 0], "b g k p n -> b (g k) p n")

    # 3. The recurrence between chunks, a linear scan over them: the state after each chunk.
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None].expand_as(chunk_states)  # (B, c, G, K, P, N)
    state = xg.new_zeros(batch, groups, heads // groups, head_dim, B.shape[-1]) if initial_state is None else \
        rearrange(initial_state, "b (g k) p n -> b g k p n", g=groups)
    after = linear_scan(chunk_decay, chunk_states, initial_state=state)  # (B, c, G, K, P, N)
    entering = torch.cat([state[:, None], after[:, :-1]], dim=1)  # the state entering each chunk
    state = after[:, -1]

    # 4. The entering state's contribution to each position of the chunk.
    y = y + torch.einsum("bctgn,bcgkpn,bcgkt->bctgkp", Cc, entering, torch.exp(a_cum))
    y = rearrange(y, "b c t g k p -> b (c t) (g k) p")[:, :length]
    return y, rearrange(state, "b g k p n -> b (g k) p n")


@ssd_op.register("torch", priority=10, aliases=("chunked",))
def ssd_chunked(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    dtype = compute_dtype(x.dtype)
    xc = x.to(dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    y, state = _chunked(xc, dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), min(chunk_size, x.shape[1]), init)
    return (y + skip(xc, D)).to(x.dtype), state


@ssd_op.register("quadratic", priority=5)
def ssd_quadratic(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    """One chunk spanning the whole sequence: the masked attention-like form."""
    dtype = compute_dtype(x.dtype)
    xc = x.to(dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    y, state = _chunked(xc, dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), x.shape[1], init)
    return (y + skip(xc, D)).to(x.dtype), state
