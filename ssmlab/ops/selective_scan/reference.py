"""The plain loop over positions: the specification of ``selective_scan``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.selective_scan import selective_scan_op


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scans run in float32 at least (as Mamba's kernels do), float64 when given float64."""
    return torch.promote_types(dtype, torch.float32)


def prepare_delta(delta, delta_bias, delta_softplus):
    delta = delta.to(compute_dtype(delta.dtype))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def grouped(m: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C at one position, (B, N) or (B, G, N), as (B, G, 1, N) for broadcasting over D/G channels."""
    return (m[:, None] if m.dim() == 2 else m)[:, :, None, :]


def step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus):
    dtype = compute_dtype(u.dtype)
    batch, channels = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    groups = 1 if B.dim() == 2 else B.shape[1]
    shape = (batch, groups, channels // groups)
    d_a = torch.exp(delta[..., None] * A.to(dtype))  # (B, D, N)
    d_bu = (delta * u.to(dtype)).reshape(shape)[..., None] * grouped(B.to(dtype), channels)  # (B, G, D/G, N)
    h = d_a * state.to(dtype) + d_bu.reshape(batch, channels, -1)
    y = (h.reshape(*shape, -1) * grouped(C.to(dtype), channels)).sum(-1).reshape(batch, channels)
    if D is not None:
        y = y + D.to(dtype) * u.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h


@selective_scan_op.register("reference", priority=0)
def selective_scan_reference(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None):
    batch, length, channels = u.shape
    state = u.new_zeros(batch, channels, A.shape[1], dtype=compute_dtype(u.dtype)) if initial_state is None \
        else initial_state
    ys = []
    zs = [None] * length if z is None else z.unbind(1)
    for u_t, delta_t, b_t, c_t, z_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1), zs):
        y, state = step(u_t, delta_t, A, b_t, c_t, state, D, z_t, delta_bias, delta_softplus)
        ys.append(y)
    return torch.stack(ys, dim=1), state
