"""The Mamba-3 recurrence one position at a time: the specification of ``mamba3``."""

from __future__ import annotations

import math

import torch

from ssmlab.ops.mamba3 import Mamba3State, mamba3_op

TWO_PI = 2 * math.pi


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """``angle`` modulo 2 pi, in [0, 2 pi), as the official code keeps its angle state."""
    return angle - TWO_PI * torch.floor(angle / TWO_PI)


def rotate(v: torch.Tensor, angle: torch.Tensor, rotary: str) -> torch.Tensor:
    """Rotate S pairs of the last dimension of ``v`` (..., N) by ``angle`` (..., S); the rest pass through.

    "interleaved" pairs (2i, 2i+1), "halves" pairs (i, i + N/2), for i < S.
    """
    pairs, n = angle.shape[-1], v.shape[-1]
    if pairs == 0:
        return v
    cos, sin = torch.cos(angle), torch.sin(angle)
    if rotary == "interleaved":
        v0, v1 = v[..., 0:2 * pairs:2], v[..., 1:2 * pairs:2]
        rotated = torch.stack([v0 * cos - v1 * sin, v0 * sin + v1 * cos], dim=-1).flatten(-2)
        return torch.cat([rotated, v[..., 2 * pairs:]], dim=-1)
    half = n // 2
    v0, v1 = v[..., :pairs], v[..., half:half + pairs]
    return torch.cat([v0 * cos - v1 * sin, v[..., pairs:half], v0 * sin + v1 * cos, v[..., half + pairs:]], dim=-1)


def expand_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., G, N) -> (..., H, N): group g serves heads g * H/G ... (g + 1) * H/G - 1."""
    return t.repeat_interleave(heads // t.shape[-2], dim=-2)


def zero_state(x: torch.Tensor, state_dim: int, pairs: int, dtype: torch.dtype) -> Mamba3State:
    """The zero state for ranked x (B, L, R, H, P)."""
    batch, rank, heads, head_dim = x.shape[0], *x.shape[-3:]
    new = lambda *s: x.new_zeros(*s, dtype=dtype)  # noqa: E731
    return Mamba3State(new(batch, heads, pairs), new(batch, heads, head_dim, state_dim),
                       new(batch, rank, heads, state_dim), new(batch, rank, heads, head_dim))


def step(x, dt, log_alpha, B, C, trap, theta, state: Mamba3State, rotary: str):
    """One position. x (B, R, H, P); B, C (B, R, G, N); dt, log_alpha, trap (B, H); theta (B, H, S)."""
    dtype = compute_dtype(x.dtype)
    x, dt, log_alpha, trap, theta = (t.to(dtype) for t in (x, dt, log_alpha, trap, theta))
    heads = x.shape[-2]
    angle = wrap(state.angle.to(dtype) + theta)  # (B, H, S)
    b = rotate(expand_groups(B.to(dtype), heads), angle[:, None], rotary)  # (B, R, H, N)
    c = rotate(expand_groups(C.to(dtype), heads), angle[:, None], rotary)
    alpha = torch.exp(log_alpha)
    beta = (1 - trap) * dt * alpha
    gamma = trap * dt
    previous = torch.einsum("brhn,brhp->bhpn", state.prev_B.to(dtype), state.prev_x.to(dtype))
    current = torch.einsum("brhn,brhp->bhpn", b, x)
    ssm = alpha[..., None, None] * state.ssm.to(dtype) + beta[..., None, None] * previous \
        + gamma[..., None, None] * current  # (B, H, P, N)
    y = torch.einsum("bhpn,brhn->brhp", ssm, c)
    return y, Mamba3State(angle, ssm, b, x)


@mamba3_op.register("reference", priority=0)
def mamba3_reference(x, dt, log_alpha, B, C, trap, theta, *, rotary, chunk_size=64, initial_state=None):
    dtype = compute_dtype(x.dtype)
    state = zero_state(x, B.shape[-1], theta.shape[-1], dtype) if initial_state is None else initial_state
    outputs = []
    for t in range(x.shape[1]):
        y, state = step(x[:, t], dt[:, t], log_alpha[:, t], B[:, t], C[:, t], trap[:, t], theta[:, t], state, rotary)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(x.dtype), Mamba3State(*(t.to(dtype) for t in state))
