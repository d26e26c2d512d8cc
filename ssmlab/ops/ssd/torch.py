"""The quadratic (masked attention-like) and chunked forms of SSD in pure PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.ssd import ssd_op
from ssmlab.ops.ssd.reference import compute_dtype

# Chunk length the ``torch`` backend uses on the CPU when asked for a longer one: the work inside chunks
# grows with the chunk length and the work between chunks shrinks, and 64 measured fastest at Mamba-2's
# shapes (H = 24, P = 64, N = 128) on a 2-core machine. A chunk length changes only the rounding.
CPU_CHUNK = 64


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """``S[..., t, s] = sum_{s < r <= t} a[..., r]`` for s <= t and -inf above the diagonal."""
    return _segments(a.cumsum(dim=-1))


def _segments(cum: torch.Tensor) -> torch.Tensor:
    """``segment_sum`` from the prefix sums ``cum`` (..., T): ``cum_t - cum_s`` below the diagonal, -inf above.

    A difference of prefix sums, as in Mamba-2's kernels: within a chunk the prefix sums stay small, and
    the diagonal is exactly 0 (a decay of exactly 1). Returns a fresh tensor (..., T, T).
    """
    length = cum.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=cum.device).tril()
    return (cum[..., :, None] - cum[..., None, :]).masked_fill_(~lower, float("-inf"))


def _chunked(x, dt, A, B, C, chunk_size, initial_state, D):
    """Block decomposition over chunks of length T (L padded to a multiple of T with dt = 0), plus ``D x``.

    The operands stay in the layout they arrive in, (B, c, T, G, K, P) for x with K = H / G heads per
    group, so that the chunk states and the states' contribution to the output are one matrix product
    per chunk and group over all its heads at once, (K P, T) x (T, N) and (T, N) x (N, K P), with no
    copy; only the product inside chunks runs head by head. Without autograd the large intermediates
    are updated in place.
    """
    batch, length, heads, head_dim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    k = heads // groups
    width = k * head_dim
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, D, initial_state)
                                                   if t is not None))
    pad = -length % chunk_size
    x_in = x
    if pad:
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    chunks = x.shape[1] // chunk_size
    shape = (batch, chunks, chunk_size, groups, k)
    xdt = (x * dt[..., None]).view(*shape, head_dim)  # (B, c, T, G, K, P)
    Bc, Cc = B.reshape(*shape[:4], n_state), C.reshape(*shape[:4], n_state)  # (B, c, T, G, N)
    a_cum = (dt * A).view(shape).cumsum(dim=2)  # (B, c, T, G, K) log-decay from the chunk's start

    # 1. Inside each chunk, the quadratic form: y_t = sum_{s<=t} exp(a_cum_t - a_cum_s) (C_t . B_s) dt_s x_s.
    scores = Cc.transpose(2, 3) @ Bc.permute(0, 1, 3, 4, 2)  # (B, c, G, T, S)
    log_decay = _segments(a_cum.permute(0, 1, 3, 4, 2))  # (B, c, G, K, T, S)
    if inplace:
        weights = log_decay.exp_().mul_(scores[:, :, :, None])  # (B, c, G, K, T, S)
    else:
        weights = log_decay.exp() * scores[:, :, :, None]
    y = (weights @ xdt.permute(0, 1, 3, 4, 2, 5)).permute(0, 1, 4, 2, 3, 5)  # (B, c, T, G, K, P), a view

    # 2. The state each chunk produces on its own (from a zero state): (K P, T) x (T, N) per chunk and group.
    to_end = torch.exp(a_cum[:, :, -1:] - a_cum)[..., None]  # (B, c, T, G, K, 1)
    xs = (xdt * to_end).view(*shape[:4], width)  # (B, c, T, G, K P)
    chunk_states = xs.permute(0, 1, 3, 4, 2) @ Bc.transpose(2, 3)  # (B, c, G, K P, N)

    if chunks > 1 or initial_state is not None:
        # 3. The recurrence between chunks, one step per chunk, and 4. the entering state's contribution
        # exp(a_cum_t) C_t . h to each position of the chunk, (T, N) x (N, K P) per group.
        decay = torch.exp(a_cum[:, :, -1])[..., None, None]  # (B, c, G, K, 1, 1)
        state = None if initial_state is None else initial_state.reshape(batch, groups, width, n_state)
        carried = []
        for i in range(chunks):
            if state is None:
                carried.append(xs.new_zeros(batch, chunk_size, groups, width))
                state = chunk_states[:, i]
                continue
            carried.append((Cc[:, i].transpose(1, 2) @ state.transpose(-1, -2)).transpose(1, 2))  # (B, T, G, K P)
            h = state.view(batch, groups, k, head_dim, n_state)
            state = torch.addcmul(chunk_states[:, i].view_as(h), decay[:, i], h).view(batch, groups, width, n_state)
        carried = torch.stack(carried, dim=1).view(*shape, head_dim)  # (B, c, T, G, K, P)
        from_start = torch.exp(a_cum)[..., None]  # (B, c, T, G, K, 1)
        y = carried.mul_(from_start).add_(y) if inplace else carried * from_start + y
    else:
        # One chunk from a zero state (short sequences): its own state is the final one and nothing enters it.
        state = chunk_states[:, 0]
    y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]  # (B, L, H, P)
    if D is not None:
        d = (D[:, None] if D.dim() == 1 else D).to(x.dtype)
        y = y.addcmul_(x_in, d) if inplace and y.is_contiguous() else x_in * d + y
    return y, state.reshape(batch, heads, head_dim, n_state)


def _run(x, dt, A, B, C, chunk_size, D, initial_state):
    dtype = compute_dtype(x.dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    y, state = _chunked(x.to(dtype), dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), chunk_size, init, D)
    return y.to(x.dtype), state


@ssd_op.register("torch", priority=10, aliases=("chunked",))
def ssd_chunked(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    """Chunks of ``chunk_size`` positions, at most :data:`CPU_CHUNK` on the CPU; the sequence's length if shorter."""
    if x.device.type == "cpu":
        chunk_size = min(chunk_size, CPU_CHUNK)
    return _run(x, dt, A, B, C, min(chunk_size, x.shape[1]), D, initial_state)


@ssd_op.register("quadratic", priority=5)
def ssd_quadratic(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    """One chunk spanning the whole sequence: the masked attention-like form."""
    return _run(x, dt, A, B, C, x.shape[1], D, initial_state)
