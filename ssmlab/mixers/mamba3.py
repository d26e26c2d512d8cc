"""Mamba-3: the exponential-trapezoidal, rotary, MIMO-capable successor of Mamba-2 (arXiv 2603.15569).

One input projection gives the gate ``z``, the input ``x``, the rank-R ``B`` and ``C`` of
each group, and per head the raw step, the raw data-dependent A and the raw trapezoid
weight, plus S angle rates shared by the heads. There is no short convolution: B and C
are RMS-normalised, given learned per-head biases, and rotated by the cumulative angles
``sum tanh(angle) * pi * dt`` (the complex state); the recurrence is the ``mamba3`` op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers import RMSNorm
from ssmlab.mixers.base import Mixer, State, at_least_float32, ssm_dtype, ssm_parameter
from ssmlab.ops import Mamba3State, mamba3, mamba3_step
from ssmlab.ops.discretize import init_dt_bias
from ssmlab.registry import register


def heavy_tail_activation(x: torch.Tensor) -> torch.Tensor:
    """``1 + x`` for x >= 0 and ``1 / (1 - x)`` for x < 0: the official code's positive map to -A."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


class _HeadwiseNormThenGate(nn.Module):
    """``RMSNorm(y) * weight * silu(z)`` over groups of ``group_size`` channels: the official block's
    optional output norm (mamba_ssm's RMSNormGated with ``norm_before_gate=True``)."""

    def __init__(self, d_inner: int, group_size: int, eps: float = 1e-5, *, device=None, dtype=None):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d_inner, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(y.dtype, torch.float32)
        g = y.to(compute).unflatten(-1, (-1, self.group_size))
        g = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (g * self.weight.to(compute) * F.silu(z.to(compute))).to(y.dtype)


@register("mixer", "mamba3", description="Mamba-3 block (exponential-trapezoidal, rotary B/C, SISO or MIMO)",
          paper="2603.15569")
class Mamba3(Mixer):
    """The Mamba-3 block (arXiv 2603.15569), as mamba_ssm's ``modules/mamba3.py`` ``Mamba3``.

    Args (defaults as in the official module):
        d_model: width D.
        d_state: state size N per head (128).
        expand: inner width E*D (2).
        headdim: head size P (64); H = E*D / P heads.
        ngroups: groups G of B and C (1), each shared by H / G heads; the biases are per head.
        rope_fraction: fraction of the N state dimensions rotated, 0.5 or 1.0 (0.5); S = N * fraction / 2
            angles (rounded down to an even number of dimensions), shared by the heads and scaled by each
            head's step.
        dt_min, dt_max, dt_init_floor: initial step log-uniform in [0.001, 0.1], floor 1e-4.
        A_floor: -A = heavy_tail(projection) is clamped below at 1e-4.
        is_outproj_norm: normalise each head's output (RMS, weighted) before the gate, as the official
            option of that name (False: the output is gated by ``silu(z)`` only).
        mimo_rank: R; 1 is the SISO model, R > 1 the MIMO model (the official ``is_mimo=True,
            mimo_rank=R``): x and z are expanded to R ranks per head by ``mimo_x``, ``mimo_z`` (H, R, P),
            B and C have R ranks, and the R outputs are contracted by ``mimo_o``.
        chunk_size: chunk length of the ``mamba3`` op's chunked form (64).
        norm_eps: epsilon of the B/C and output RMS norms (1e-5).
        bias: biases on the input and output projections (False, as the official module).
        lr: learning rate for dt_bias and D (no weight decay on either).

    Conventions kept differently from the official code, on purpose: B_bias and C_bias take the
    module's dtype (the official module makes them float32); the projections of A and of the
    angles are computed in float32 or wider (the official forward casts them to float32, also from
    float64); the rotary layout is the official
    kernels' (pairs (2i, 2i+1) for SISO, (i, i + N/2) for MIMO) and the angle state is kept per
    head; the MIMO state holds the rank-expanded previous input (the official cache keeps x and
    applies ``mimo_x`` in its step kernel).

    State: ``{"angle": (B, H, S), "ssm": (B, H, P, N), "prev_B": (B, R, H, N), "prev_x": (B, R, H, P)}``,
    float32 at least (see the ``mamba3`` op).
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 128, expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 rope_fraction: float = 0.5, *, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_floor: float = 1e-4, is_outproj_norm: bool = False,
                 mimo_rank: int = 1, chunk_size: int = 64, norm_eps: float = 1e-5, bias: bool = False,
                 lr: float | None = None, backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"mamba3: expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"mamba3: the number of heads {self.nheads} must be divisible by ngroups={ngroups}")
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"mamba3: rope_fraction must be 0.5 or 1.0, got {rope_fraction!r}")
        if isinstance(mimo_rank, bool) or not isinstance(mimo_rank, int) or mimo_rank < 1:
            raise ValueError(f"mamba3: mimo_rank must be a positive int, got {mimo_rank!r}")
        rotated = int(d_state * rope_fraction)
        self.num_rope_angles = (rotated - rotated % 2) // 2
        if self.num_rope_angles < 1:
            raise ValueError(f"mamba3: d_state={d_state} leaves no rotated pair at rope_fraction={rope_fraction}")
        if mimo_rank > 1 and d_state % 2:
            raise ValueError(f"mamba3: MIMO rotates dimension i with i + N/2, so d_state={d_state} must be even")
        self.d_state, self.headdim, self.ngroups, self.mimo_rank = d_state, headdim, ngroups, mimo_rank
        self.A_floor, self.chunk_size, self.backend = A_floor, chunk_size, backend
        self.rotary = "halves" if mimo_rank > 1 else "interleaved"
        bc_dim = d_state * ngroups * mimo_rank
        self.sizes = [self.d_inner, self.d_inner, bc_dim, bc_dim, self.nheads, self.nheads, self.nheads,
                      self.num_rope_angles]  # z, x, B, C, dt, A, trap, angles
        self.in_proj = nn.Linear(d_model, sum(self.sizes), bias=bias, **self.factory)
        self.dt_bias = ssm_parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, device=device,
                                                  dtype=ssm_dtype(dtype)), dtype, lr=lr)
        self.B_bias = nn.Parameter(torch.ones(self.nheads, mimo_rank, d_state, **self.factory))
        self.C_bias = nn.Parameter(torch.ones(self.nheads, mimo_rank, d_state, **self.factory))
        self.B_norm = RMSNorm(d_state, norm_eps, **self.factory)
        self.C_norm = RMSNorm(d_state, norm_eps, **self.factory)
        if mimo_rank > 1:
            ones = torch.ones(self.nheads, mimo_rank, headdim, **self.factory)
            self.mimo_x = nn.Parameter(ones / mimo_rank)
            self.mimo_z = nn.Parameter(ones.clone())
            self.mimo_o = nn.Parameter(ones / mimo_rank)
        self.D = ssm_parameter(torch.ones(self.nheads, device=device), self.factory["dtype"], lr=lr)
        self.norm = _HeadwiseNormThenGate(self.d_inner, headdim, norm_eps, **self.factory) if is_outproj_norm \
            else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **self.factory)

    def _inputs(self, u: torch.Tensor):
        """Project ``u`` (..., D) to the op's inputs, with the positions (or none, for a step) in ``...``."""
        z, x, b, c, dd_dt, dd_A, trap, angles = torch.split(self.in_proj(u), self.sizes, dim=-1)
        z = rearrange(z, "... (h p) -> ... h p", p=self.headdim)
        x = rearrange(x, "... (h p) -> ... h p", p=self.headdim)
        b = self.B_norm(rearrange(b, "... (r g n) -> ... r g n", r=self.mimo_rank, g=self.ngroups))
        c = self.C_norm(rearrange(c, "... (r g n) -> ... r g n", r=self.mimo_rank, g=self.ngroups))
        # The biases are per head: B and C expanded from groups to heads, (..., R, H, N).
        repeat = self.nheads // self.ngroups
        b = b.repeat_interleave(repeat, dim=-2) + self.B_bias.transpose(0, 1)
        c = c.repeat_interleave(repeat, dim=-2) + self.C_bias.transpose(0, 1)
        A = -heavy_tail_activation(at_least_float32(dd_A)).clamp_min(self.A_floor)  # (..., H)
        dt = F.softplus(dd_dt + self.dt_bias)
        theta = torch.tanh(at_least_float32(angles))[..., None, :] * math.pi * dt[..., None]  # (..., H, S)
        if self.mimo_rank > 1:
            x = torch.einsum("...hp,hrp->...rhp", x, self.mimo_x)
        else:
            x = x.unsqueeze(-3)
        return z, x, b, c, dt, A * dt, torch.sigmoid(trap), theta

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, x (..., R, H, P) and z (..., H, P) -> the block's output (..., D): skip, gate, rank contraction."""
        y = y + self.D[:, None] * x
        if self.mimo_rank > 1:
            z = torch.einsum("...hp,hrp->...rhp", z, self.mimo_z)
        else:
            z = z.unsqueeze(-3)
        if self.norm is None:
            y = y * F.silu(z)
        else:
            y = self.norm(rearrange(y, "... h p -> ... (h p)"), rearrange(z, "... h p -> ... (h p)"))
            y = rearrange(y, "... (h p) -> ... h p", p=self.headdim)
        y = torch.einsum("...rhp,hrp->...hp", y, self.mimo_o.to(y.dtype)) if self.mimo_rank > 1 else y.squeeze(-3)
        return self.out_proj(rearrange(y, "... h p -> ... (h p)").to(self.out_proj.weight.dtype))

    def _forward(self, u, state, return_state):
        z, x, b, c, dt, log_alpha, trap, theta = self._inputs(u)
        initial = None if state is None else Mamba3State(*(state[k] for k in Mamba3State._fields))
        y, final = mamba3(x, dt, log_alpha, b, c, trap, theta=theta, rotary=self.rotary, initial_state=initial,
                          return_final_state=True, chunk_size=self.chunk_size, backend=self.backend)
        out = self._output(y, x, z)
        return out, (final._asdict() if return_state else None)

    def _step(self, u_t, state):
        z, x, b, c, dt, log_alpha, trap, theta = self._inputs(u_t)
        y, new = mamba3_step(x, dt, log_alpha, b, c, trap, Mamba3State(*(state[k] for k in Mamba3State._fields)),
                             theta=theta, rotary=self.rotary)
        return self._output(y, x, z), new._asdict()

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = torch.promote_types(dtype or self.out_proj.weight.dtype, torch.float32)
        new = lambda *s: torch.zeros(batch_size, *s, device=device, dtype=dtype)  # noqa: E731
        r, h, p, n = self.mimo_rank, self.nheads, self.headdim, self.d_state
        return {"angle": new(h, self.num_rope_angles), "ssm": new(h, p, n), "prev_B": new(r, h, n),
                "prev_x": new(r, h, p)}


@register("mixer", "mamba3-mimo", description="Mamba-3 MIMO: the mamba3 block with rank-4 multi-input multi-output updates",
          paper="2603.15569")
class Mamba3MIMO(Mamba3):
    """Mamba-3's MIMO model (arXiv 2603.15569, the official ``is_mimo=True``): :class:`Mamba3` with
    ``mimo_rank=4`` by default, registered under its own name so that listings and suites show both models.
    ``mimo_rank`` must be at least 2 (rank 1 is ``mamba3``)."""

    def __init__(self, d_model: int, *args, mimo_rank: int = 4, **kwargs):
        if isinstance(mimo_rank, int) and not isinstance(mimo_rank, bool) and mimo_rank < 2:
            raise ValueError(f"mamba3-mimo: mimo_rank must be at least 2 (rank 1 is mamba3), got {mimo_rank!r}")
        super().__init__(d_model, *args, mimo_rank=mimo_rank, **kwargs)
