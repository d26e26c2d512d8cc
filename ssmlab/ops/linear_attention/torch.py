"""The parallel (quadratic) and chunkwise forms of ``linear_attention`` in pure PyTorch.

Both work in the (B, H, L, *) layout. The chunkwise form passes the state
between chunks with ``linear_scan`` through its public dispatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.linear_attention import linear_attention_op
from ssmlab.ops.scan import linear_scan


def _decay_powers(log_decay: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``gamma ** exponents`` for integer exponents, zero where an exponent is negative.

    ``log_decay`` (H,) and ``exponents`` (...) give (H, ...).
    """
    shape = (-1,) + (1,) * exponents.dim()
    powers = torch.exp(log_decay.view(shape) * exponents.clamp_min(0).to(log_decay.dtype))
    return powers * (exponents >= 0).to(log_decay.dtype)


def _parallel(q, k, v, log_decay, state):
    """The quadratic form: ``y = (q k^T o M) v + gamma^(t+1) q S0``; layouts (B, H, L, *)."""
    length = q.shape[2]
    idx = torch.arange(length, device=q.device)
    decay = _decay_powers(log_decay, idx[:, None] - idx[None, :])  # (H, L, L)
    y = ((q @ k.transpose(-1, -2)) * decay) @ v  # (B, H, L, V)
    y = y + _decay_powers(log_decay, idx + 1)[..., None] * (q @ state)
    to_end = _decay_powers(log_decay, length - 1 - idx)  # (H, L)
    final = (k * to_end[..., None]).transpose(-1, -2) @ v + _decay_powers(log_decay, idx.new_tensor(length))[
        :, None, None] * state  # (B, H, K, V)
    return y, final


def _chunkwise(q, k, v, log_decay, state, chunk_size):
    """Parallel inside chunks of ``chunk_size``, the recurrence between chunks; layouts (B, H, L, *).

    The state entering each chunk comes from ``linear_scan`` over the chunks with
    decay ``gamma ** chunk_length``.
    """
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    size = min(chunk_size, length)
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.unflatten(2, (n_chunks, size)) for t in (q, k, v))  # (B, H, n, C, *)
    idx = torch.arange(size, device=q.device)
    lengths = torch.full((n_chunks,), size, device=q.device)
    lengths[-1] = size - pad
    intra = _decay_powers(log_decay, idx[:, None] - idx[None, :])[:, None]  # (H, 1, C, C)
    y = ((q @ k.transpose(-1, -2)) * intra) @ v  # (B, H, n, C, V)
    # Decay from each position to the end of its chunk; zero on padding.
    to_end = _decay_powers(log_decay, lengths[:, None] - 1 - idx)  # (H, n, C)
    chunk_sums = (k * to_end[..., None]).transpose(-1, -2) @ v  # (B, H, n, K, V)
    chunk_decay = _decay_powers(log_decay, lengths)  # (H, n)
    a = rearrange(chunk_decay, "h n -> n h")[None, :, :, None, None].expand(batch, -1, -1, dk, dv)
    after = linear_scan(a, rearrange(chunk_sums, "b h n k v -> b n h k v"), initial_state=state)
    before = torch.cat([state[:, None], after[:, :-1]], dim=1)  # (B, n, H, K, V)
    y = y + _decay_powers(log_decay, idx + 1)[:, None, :, None] * (q @ rearrange(before, "b n h k v -> b h n k v"))
    y = y.flatten(2, 3)[:, :, :length]
    return y, after[:, -1]


def _head_major(q, k, v, log_decay, initial_state):
    """(B, L, H, *) -> (B, H, L, *), with the decay and state defaults (zeros) filled in."""
    batch, _, heads, dk = q.shape
    if log_decay is None:
        log_decay = q.new_zeros(heads)
    if initial_state is None:
        initial_state = q.new_zeros(batch, heads, dk, v.shape[-1])
    q, k, v = (rearrange(t, "b l h e -> b h l e") for t in (q, k, v))
    return q, k, v, log_decay, initial_state


@linear_attention_op.register("quadratic", priority=5)
def linear_attention_quadratic(q, k, v, *, log_decay=None, initial_state=None, chunk_size=64):
    """The masked ``L x L`` form: O(L^2) time and memory, the fewest sequential steps."""
    y, final = _parallel(*_head_major(q, k, v, log_decay, initial_state))
    return rearrange(y, "b h l e -> b l h e"), final


@linear_attention_op.register("torch", priority=10)
def linear_attention_chunkwise(q, k, v, *, log_decay=None, initial_state=None, chunk_size=64):
    """The chunkwise form: quadratic inside chunks of ``chunk_size``, ``linear_scan`` between them."""
    y, final = _chunkwise(*_head_major(q, k, v, log_decay, initial_state), chunk_size)
    return rearrange(y, "b h l e -> b l h e"), final
