"""The chunked form of the Mamba-3 recurrence in pure PyTorch (derived in the module docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.mamba3 import Mamba3State, mamba3_op
from ssmlab.ops.mamba3.reference import compute_dtype, expand_groups, rotate, wrap
from ssmlab.ops.scan import linear_scan


def _decays(a: torch.Tensor) -> torch.Tensor:
    """``exp(sum_{s < r <= t} a_r)`` for s <= t and 0 above the diagonal, for a (..., T) -> (..., T, T).

    Summed with masked cumulative sums, not as a difference of prefix sums, so that it keeps full
    precision when the prefix sums are large.
    """
    length = a.shape[-1]
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    sums = a[..., :, None].expand(*a.shape, length).masked_fill(~strictly_lower, 0.0).cumsum(dim=-2)
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    return torch.exp(sums.masked_fill(~lower, float("-inf")))


@mamba3_op.register("torch", priority=10, aliases=("chunked",))
def mamba3_chunked(x, dt, log_alpha, B, C, trap, theta, *, rotary, chunk_size=64, initial_state=None):
    dtype = compute_dtype(x.dtype)
    xc, dt, log_alpha, trap, theta = (t.to(dtype) for t in (x, dt, log_alpha, trap, theta))
    batch, length, rank, heads, head_dim = x.shape
    state_dim = B.shape[-1]

    angle0 = theta.new_zeros(batch, heads, theta.shape[-1]) if initial_state is None \
        else initial_state.angle.to(dtype)
    angles = wrap(angle0[:, None] + theta.cumsum(dim=1))  # (B, L, H, S)
    b = rotate(expand_groups(B.to(dtype), heads), angles[:, :, None], rotary)  # (B, L, R, H, N)
    c = rotate(expand_groups(C.to(dtype), heads), angles[:, :, None], rotary)

    # The weights of input s: gamma_s at s, and the next position's (1 - lambda) dt once t > s.
    gamma = trap * dt  # (B, L, H)
    pending = (1 - trap) * dt  # beta_t / alpha_t
    pending_next = F.pad(pending[:, 1:], (0, 0, 0, 1))  # (1 - lambda_{s+1}) dt_{s+1}, 0 after the last

    if initial_state is None:
        entering = xc.new_zeros(batch, heads, head_dim, state_dim)
    else:
        previous = torch.einsum("brhn,brhp->bhpn", initial_state.prev_B.to(dtype), initial_state.prev_x.to(dtype))
        entering = initial_state.ssm.to(dtype) + pending[:, 0, :, None, None] * previous  # (B, H, P, N)

    size = min(chunk_size, length)
    pad = -length % size
    if pad:
        xp, b, c = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad)) for t in (xc, b, c))
        log_alpha, gamma, pending_next = (F.pad(t, (0, 0, 0, pad)) for t in (log_alpha, gamma, pending_next))
    else:
        xp = xc
    # Head-major, the T positions and R ranks of a chunk on one axis: every product below is a batched matmul.
    xk = rearrange(xp, "b (c t) r h p -> b h c (t r) p", t=size)
    bk = rearrange(b, "b (c t) r h n -> b h c (t r) n", t=size)
    ck = rearrange(c, "b (c t) r h n -> b h c (t r) n", t=size)
    a, gamma, pending_next = (rearrange(t, "b (c t) h -> b h c t", t=size) for t in (log_alpha, gamma, pending_next))
    a_cum = a.cumsum(dim=-1)  # (B, H, c, T)

    # 1. Inside each chunk: M_ts = exp(G_t - G_s) (gamma_s + [s < t] pending_{s+1}), for every pair of ranks.
    strictly_lower = torch.ones(size, size, dtype=torch.bool, device=x.device).tril(-1)
    mask = _decays(a) * (gamma[..., None, :] + pending_next[..., None, :] * strictly_lower)  # (B, H, c, T, S)
    scores = (ck @ bk.transpose(-1, -2)).unflatten(-1, (size, rank)).unflatten(-3, (size, rank))
    scores = (scores * mask[..., :, None, :, None]).flatten(-4, -3).flatten(-2)  # (B, H, c, TR, SR)
    y = scores @ xk  # (B, H, c, TR, P)

    # 2. The state each chunk writes from a zero state, including its last input's pending beta term.
    to_end = torch.exp(a_cum[..., -1:] - a_cum) * (gamma + pending_next)  # (B, H, c, T)
    weighted = xk * to_end.repeat_interleave(rank, dim=-1)[..., None]
    chunk_states = (weighted.transpose(-1, -2) @ bk).transpose(1, 2)  # (B, c, H, P, N)

    # 3. Between chunks: a linear scan over them gives the state entering each chunk.
    chunk_decay = torch.exp(a_cum[..., -1]).transpose(1, 2)[..., None, None].expand_as(chunk_states)
    after = linear_scan(chunk_decay, chunk_states, initial_state=entering)  # (B, c, H, P, N)
    entering_each = torch.cat([entering[:, None], after[:, :-1]], dim=1).transpose(1, 2)  # (B, H, c, P, N)

    # 4. The entering state's contribution to each position of the chunk.
    decay_in = torch.exp(a_cum).repeat_interleave(rank, dim=-1)[..., None]  # (B, H, c, TR, 1)
    y = y + (ck * decay_in) @ entering_each.transpose(-1, -2)
    y = rearrange(y, "b h c (t r) p -> b (c t) r h p", r=rank)[:, :length]
    state = Mamba3State(angles[:, -1], after[:, -1], b[:, length - 1], xc[:, -1])
    return y.to(x.dtype), state
