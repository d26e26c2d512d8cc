"""The SSD recurrence, one position at a time: the specification of ``ssd``."""

from __future__ import annotations

import torch

from ssmlab.ops.ssd import ssd_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def skip(x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor | float:
    """``D x`` for D of shape (H,) or (H, P), x (..., H, P)."""
    if D is None:
        return 0.0
    return x * (D[:, None] if D.dim() == 1 else D).to(x.dtype)


def step(x, dt, A, B, C, state, D=None):
    dtype = compute_dtype(x.dtype)
    heads, groups = x.shape[1], B.shape[1]
    x, dt = x.to(dtype), dt.to(dtype)
    b = B.to(dtype).repeat_interleave(heads // groups, dim=1)  # (B, H, N)
    c = C.to(dtype).repeat_interleave(heads // groups, dim=1)
    decay = torch.exp(dt * A.to(dtype))  # (B, H)
    h = decay[..., None, None] * state.to(dtype) + (dt[..., None] * x)[..., None] * b[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, c) + skip(x, D)
    return y, h


@ssd_op.register("reference", priority=0)
def ssd_reference(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    batch, length, heads, head_dim = x.shape
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=compute_dtype(x.dtype)) \
        if initial_state is None else initial_state
    ys = []
    for x_t, dt_t, b_t, c_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        y, state = step(x_t, dt_t, A, b_t, c_t, state, D)
        ys.append(y)
    return torch.stack(ys, dim=1).to(x.dtype), state
