"""The quadratic (masked attention-like) and chunked forms of SSD in pure PyTorch."""

from __future__ import annotations

import math

import torch

from ssmlab.ops.ssd import ssd_op
from ssmlab.ops.ssd.reference import compute_dtype

# Chunk length the ``torch`` backend uses on the CPU when asked for a longer one: the work inside chunks
# grows with the chunk length and the work between chunks shrinks, and 64 measured fastest at Mamba-2's
# shapes (H = 24, P = 64, N = 128) on a 2-core machine. A chunk length changes only the rounding.
CPU_CHUNK = 64


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """``S[..., t, s] = sum_{s < r <= t} a[..., r]`` for s <= t and -inf above the diagonal: a difference of
    prefix sums, as in Mamba-2's kernels (within a chunk the prefix sums stay small), 0 on the diagonal."""
    length = a.shape[-1]
    cum = a.cumsum(dim=-1)
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    return (cum[..., :, None] - cum[..., None, :]).masked_fill_(~lower, float("-inf"))


def _chunked(x, dt, A, B, C, chunk_size, initial_state, D):
    """Chunk by chunk: the quadratic form inside the chunk plus the entering state's contribution, then the
    state after it; plus ``D x``. The last chunk may be shorter. Returns y (B, L, H, P), state (B, H, P, N).

    Every intermediate is the size of one chunk, (B, H, T, T) or (B, T, H, P), so it stays in cache and is
    not a fresh page-faulted allocation. x is read in its arriving layout, (B, T, G, K, P) with K = H / G
    heads per group: the chunk state and the state's contribution to the output are one matrix product
    per group over all its heads, (K P, T) x (T, N) and (T, N) x (N, K P); only the product inside the
    chunk runs head by head. Without autograd the intermediates are updated in place and y is written
    into one output buffer.
    """
    batch, length, heads, head_dim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    k = heads // groups
    width = k * head_dim
    inplace = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                   for t in (x, dt, A, B, C, D, initial_state)))
    d = None if D is None else (D[:, None] if D.dim() == 1 else D).to(x.dtype)  # (H, 1) or (H, P)
    state = None if initial_state is None else initial_state.reshape(batch, groups, width, n_state)
    y = x.new_empty(batch, length, heads, head_dim) if inplace else None
    lower = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    # Every decay exponent is at least ``floor``: exp(floor) is far below rounding (1e-19 in float32, 1e-154 in
    # float64), while exponentials that underflow take a slow path (about 6x) and subnormal states and outputs
    # slow every later product on the CPU.
    floor = math.log(torch.finfo(x.dtype).tiny) / 2
    # The prefix sums of the log-decays, and their differences, in float64: in float32 a difference of two
    # sums of size S loses S * 1e-7 of the exponent (the float32 ones lost 1e-4 of y's scale when a = -25).
    wide = torch.promote_types(x.dtype, torch.float64)
    outputs = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        t = end - start
        x_i, dt_i = x[:, start:end], dt[:, start:end]  # (B, T, H, P), (B, T, H)
        B_i, C_i = B[:, start:end].transpose(1, 2), C[:, start:end].transpose(1, 2)  # (B, G, T, N)
        a_cum = (dt_i * A).to(wide).cumsum(dim=1)  # (B, T, H) log-decay from the chunk's start
        a_heads = a_cum.transpose(1, 2).reshape(batch, groups, k, t)  # (B, G, K, T)
        xdt = (x_i * dt_i[..., None]).view(batch, t, groups, k, head_dim)  # (B, T, G, K, P)

        # The quadratic form: y_t = sum_{s<=t} exp(a_cum_t - a_cum_s) (C_t . B_s) dt_s x_s; the causal mask
        # multiplies the scores.
        scores = ((C_i @ B_i.transpose(-1, -2)) * lower[:t, :t])[:, :, None]  # (B, G, 1, T, S)
        log_decay = (a_heads[..., :, None] - a_heads[..., None, :]).to(x.dtype).masked_fill_(~lower[:t, :t], floor)
        if inplace:
            weights = log_decay.clamp_min_(floor).exp_().mul_(scores)  # (B, G, K, T, S)
        else:
            weights = log_decay.clamp_min(floor).exp() * scores
        y_i = weights @ xdt.permute(0, 2, 3, 1, 4)  # (B, G, K, T, P)
        if state is not None:
            # The entering state's contribution, exp(a_cum_t) C_t . h: (T, N) x (N, K P) per group.
            carried = (C_i @ state.transpose(-1, -2)).view(batch, groups, t, k, head_dim).transpose(2, 3)
            from_start = a_heads.to(x.dtype).clamp_min(floor).exp()[..., None]  # (B, G, K, T, 1)
            y_i = y_i.addcmul_(carried, from_start) if inplace else y_i + carried * from_start

        # The state after the chunk: its own, (K P, T) x (T, N) per group, plus the entering one decayed.
        to_end = (a_cum[:, -1:] - a_cum).to(x.dtype).clamp_min(floor).exp().view(batch, t, groups, k, 1)
        xs = (xdt.mul_(to_end) if inplace else xdt * to_end).view(batch, t, groups, width)
        own = xs.permute(0, 2, 3, 1) @ B_i  # (B, G, K P, N)
        if state is None:
            state = own
        else:
            decay = a_cum[:, -1].to(x.dtype).clamp_min(floor).exp().view(batch, groups, k, 1, 1)
            h = state.view(batch, groups, k, head_dim, n_state)
            own = own.view_as(h)
            state = (own.addcmul_(decay, h) if inplace else own + decay * h).view(batch, groups, width, n_state)

        y_i = y_i.permute(0, 3, 1, 2, 4)  # (B, T, G, K, P), a view
        if inplace:
            out = y[:, start:end]
            out.view(batch, t, groups, k, head_dim).copy_(y_i)
            if d is not None:
                out.addcmul_(x_i, d)
        else:
            y_i = y_i.reshape(batch, t, heads, head_dim)
            outputs.append(y_i if d is None else y_i + x_i * d)
    if not inplace:
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
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
