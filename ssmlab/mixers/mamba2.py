"""Mamba-2: the SSD block (arXiv 2405.21060).

One input projection produces the gate ``z``, the convolved stream ``xBC``
(``x`` and the grouped ``B``, ``C``) and the per-head step ``dt``; the SSD
scan (scalar-times-identity A per head) mixes along the sequence; a gated
RMSNorm ``norm(y * SiLU(z))`` and an output projection follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers import GatedRMSNorm
from ssmlab.layers.conv import ShortConvolution
from ssmlab.layers.linear import project
from ssmlab.mixers.base import LengthsInForward, Mixer, padding_mask, State, ssm_dtype, ssm_parameter
from ssmlab.ops import ssd, ssd_step
from ssmlab.ops.discretize import init_dt_bias
from ssmlab.registry import register


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x (B, L, C) contiguous along C. The convolution may return a (B, C, L) tensor seen as (B, L, C), and SSD
    reads x, B and C position by position, so the strided reads would cost more than a copy. On the CPU such a
    tensor is copied one (L, C) matrix at a time, which torch transposes by blocks: 3 ms against 25 ms for
    (1, 2048, 1792) as one 3-d copy."""
    if x.is_contiguous() or x.device.type != "cpu" or x.stride(1) != 1:
        return x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for i in range(x.shape[0]):
        out[i].copy_(x[i])
    return out


@register("mixer", "mamba2", description="Mamba-2 block (SSD with heads and groups, gated RMSNorm)",
          paper="2405.21060")
class Mamba2(LengthsInForward, Mixer):
    """The Mamba-2 block (Dao and Gu, arXiv 2405.21060).

    Args (defaults as in the paper's code):
        d_model: width D.
        d_state: state size N per head (128).
        d_conv: width of the causal depthwise convolution over x, B, C (4).
        expand: inner width E*D (2).
        headdim: head size P (64); the number of heads is ``E*D / P``.
        ngroups: groups G of B and C shared by ``H / G`` heads each (1).
        chunk_size: chunk length of the SSD algorithm (256).
        dt_min, dt_max, dt_init_floor: initial step log-uniform in [0.001, 0.1], floor 1e-4.
        A_init_range: A = -a with a uniform in this range (1, 16).
        norm_eps: epsilon of the gated RMSNorm (1e-5), which normalises each group of
            ``E*D / G`` channels separately, as the reference implementation does.
        conv_bias (True), bias (False); lr: learning rate for A_log, dt_bias and D (no weight decay).

    State: ``{"conv": (B, E*D + 2*G*N, d_conv - 1), "ssm": (B, H, P, N)}``.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256, *, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_init_range: tuple[float, float] = (1.0, 16.0), norm_eps: float = 1e-5,
                 conv_bias: bool = True, bias: bool = False, lr: float | None = None, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"mamba2: expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"mamba2: the number of heads {self.nheads} must be divisible by ngroups={ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"mamba2: A_init_range must be positive and ordered, got {A_init_range}")
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.chunk_size, self.backend = chunk_size, backend
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **self.factory)
        self.conv1d = ShortConvolution(self.conv_dim, d_conv, bias=conv_bias, **self.factory)
        self.dt_bias = ssm_parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, device=device,
                                                  dtype=ssm_dtype(dtype)), dtype, lr=lr)
        a = torch.empty(self.nheads, device=device, dtype=torch.float64).uniform_(*A_init_range)
        self.A_log = ssm_parameter(torch.log(a), self.factory["dtype"], lr=lr)
        self.D = ssm_parameter(torch.ones(self.nheads, device=device), self.factory["dtype"], lr=lr)
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups, norm_eps, **self.factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **self.factory)

    def _split(self, zxbcdt: torch.Tensor):
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _heads(self, xbc: torch.Tensor):
        x, b, c = torch.split(xbc, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = rearrange(x, "... (h p) -> ... h p", p=self.headdim)
        b = rearrange(b, "... (g n) -> ... g n", g=self.ngroups)
        c = rearrange(c, "... (g n) -> ... g n", g=self.ngroups)
        return x, b, c

    def _forward(self, x, state, return_state, lengths=None):
        z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv_state = self.conv1d(xbc, None if state is None else state["conv"], return_state=True,
                                      lengths=lengths)
        xh, b, c = self._heads(F.silu(_channels_last(xbc)))  # (B, L, H, P), (B, L, G, N), (B, L, G, N)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        if lengths is not None:
            # A zero step at padded positions leaves the state as it was (decay exp(0) = 1, input 0).
            dt = dt * padding_mask(lengths, x.shape[1])[..., None]
        y, ssm_state = ssd(xh, dt, -torch.exp(self.A_log), b, c, chunk_size=self.chunk_size, D=self.D,
                           initial_state=None if state is None else state["ssm"], return_final_state=True,
                           backend=self.backend)
        y = self.norm(rearrange(y, "b l h p -> b l (h p)"), z)
        return self.out_proj(y), ({"conv": conv_state, "ssm": ssm_state} if return_state else None)

    def _step(self, x_t, state):
        z, xbc, dt = self._split(project(self.in_proj, x_t))
        xbc, conv_state = self.conv1d.step(xbc, state["conv"], activation="silu")
        xh, b, c = self._heads(xbc)  # (B, H, P), (B, G, N), (B, G, N)
        dt = F.softplus(dt + self.dt_bias)  # (B, H)
        y, ssm_state = ssd_step(xh, dt, -torch.exp(self.A_log), b, c, state["ssm"], D=self.D)
        y = self.norm(rearrange(y, "b h p -> b (h p)"), z)
        return project(self.out_proj, y), {"conv": conv_state, "ssm": ssm_state}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        return {"conv": self.conv1d.init_state(batch_size, device=device, dtype=dtype),
                "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                   dtype=torch.promote_types(dtype, torch.float32))}
