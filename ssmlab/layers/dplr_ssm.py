"""The S4 layer's machinery (arXiv 2111.00396), shared by S4 and Liquid-S4 (arXiv 2209.12951).

:class:`DPLRMixer` holds S4's parameters (a diagonal-plus-low-rank state matrix initialised from
HiPPO-LegS, kept as one half of its conjugate spectrum), computes the kernel with the Cauchy
kernel and the Woodbury identity, applies it with an FFT, steps the discretised recurrence and
ends with S4's output stage. It is not registered: :class:`ssmlab.mixers.s4.S4` is this layer,
and :class:`ssmlab.mixers.liquid_s4.LiquidS4` adds its liquid terms through two hooks,
:meth:`DPLRMixer._ssm_input` (what drives the SSM) and :meth:`DPLRMixer._extra_terms` (terms added
to its output).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.layers.mlp import GELUGLUOutput
from ssmlab.mixers.base import Mixer, State, at_least_float32, complex_dtype, ssm_dtype, ssm_parameter
from ssmlab.ops import discretize_dplr, dplr, fft_conv, init_log_dt, ssm_kernel_dplr
from ssmlab.ops.kernels import apply_transition, dense_state_terms


class DPLRMixer(Mixer):
    """S4's layer without a registry name; the arguments, conventions and state are those of
    :class:`ssmlab.mixers.s4.S4`, which documents them."""

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, n_ssm: int | None = None, rank: int = 1,
                 dt_min: float = 0.001, dt_max: float = 0.1, lr: float | None = 0.001, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None):
        super().__init__(d_model, bidirectional=bidirectional, device=device, dtype=dtype)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"s4: d_state must be an even number >= 2, got {d_state}")
        n_ssm = n_ssm or d_model
        if d_model % n_ssm or rank < 1:
            raise ValueError(f"s4: n_ssm={n_ssm} must divide d_model={d_model} and rank must be >= 1")
        dtype = self.factory["dtype"]
        self.d_state, self.n_ssm, self.rank = d_state, n_ssm, rank
        half = d_state // 2
        Lambda, P, B, _ = dplr("legs", d_state, conj_sym=True)
        P = torch.cat([P, torch.zeros(rank - 1, half, dtype=P.dtype)]) if rank > 1 else P
        as_param = lambda t: ssm_parameter(torch.view_as_real(t.to(device)).expand(  # noqa: E731
            n_ssm, *t.shape, 2).clone(), dtype, lr=lr)
        # Lambda's real part is kept negative through A_real = -exp(log_A_real).
        self.log_A_real = ssm_parameter(torch.log(-Lambda.real).to(device).expand(n_ssm, half).clone(), dtype, lr=lr)
        self.A_imag = ssm_parameter(Lambda.imag.to(device).expand(n_ssm, half).clone(), dtype, lr=lr)
        self.P = as_param(P)  # (n_ssm, r, N/2, 2)
        self.B = as_param(B)  # (n_ssm, N/2, 2)
        n_c = 2 if bidirectional else 1
        c = torch.randn(n_c, d_model, half, 2, device=device, dtype=torch.float64) * math.sqrt(0.5)
        self.C = nn.Parameter(c.to(dtype))
        self.log_dt = ssm_parameter(init_log_dt(d_model, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype)),
                                    dtype, lr=lr)
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=ssm_dtype(dtype)), dtype, weight_decay=None)
        self.output = GELUGLUOutput(d_model, dropout, **self.factory)

    def _system(self):
        """Per-channel Lambda (H, N/2), P (H, r, N/2), B (H, N/2), C (n, H, N/2) and dt (H,)."""
        per = self.d_model // self.n_ssm
        lam = torch.complex(-torch.exp(self.log_A_real), self.A_imag).repeat_interleave(per, dim=0)
        p = torch.view_as_complex(self.P.contiguous()).repeat_interleave(per, dim=0)
        b = torch.view_as_complex(self.B.contiguous()).repeat_interleave(per, dim=0)
        return lam, p, b, torch.view_as_complex(self.C.to(self.log_dt.dtype).contiguous()), torch.exp(self.log_dt)

    def _forward(self, x, state, return_state):
        length = x.shape[1]
        lam, p, b, c, dt = self._system()
        kernel = ssm_kernel_dplr(lam, p, b, c[0], dt, length, conj_sym=True)  # (H, L)
        if self.bidirectional:
            kernel = torch.cat([kernel, ssm_kernel_dplr(lam, p, b, c[1], dt, length, conj_sym=True)], dim=-1)
        u = at_least_float32(self._ssm_input(x, state))
        y = fft_conv(u, kernel.to(u.dtype), bidirectional=self.bidirectional) + self.D * x
        if state is not None or return_state:
            a_bar, b_bar = self._discrete_half(lam, p, b, dt)  # (H, N/2, N), (H, N/2)
            extra, h = dense_state_terms(u, a_bar, b_bar, c[0], None if state is None else state["ssm"],
                                         return_state)
            y = y if extra is None else y + extra
        new_state = {"ssm": h} if return_state else None
        extra = self._extra_terms(x, state)
        return self.output((y if extra is None else y + extra).to(x.dtype)), new_state

    @staticmethod
    def _discrete_half(lam, p, b, dt):
        """Bilinear A_bar (H, N/2, N) and B_bar (H, N/2) of the full system, the rows of the kept half."""
        a_bar, b_bar = discretize_dplr(lam, p, b, dt, "bilinear", conj_sym=True)  # (H, N, N), (H, N)
        half = lam.shape[-1]
        return a_bar[..., :half, :], b_bar[..., :half]

    def _extra_terms(self, x, state):
        """Terms (B, L, H) a subclass adds to the SSM output before the activation (Liquid-S4's)."""
        return None

    def _ssm_input(self, x, state):
        """The input (B, L, H) that drives the SSM (the D skip always reads ``x``); Liquid-S4's KB form
        adds input correlations here."""
        return x

    def _step(self, x_t, state):
        lam, p, b, c, dt = self._system()
        a_bar, b_bar = self._discrete_half(lam, p, b, dt)
        u_t = self._ssm_input(x_t[:, None], state)[:, 0]
        h = apply_transition(a_bar, state["ssm"]) + b_bar * u_t[..., None].to(b_bar.dtype)
        y = 2 * torch.einsum("hn,bhn->bh", c[0], h).real.to(x_t.dtype) + self.D * x_t
        extra = self._extra_terms(x_t[:, None], state)
        return self.output((y if extra is None else y + extra[:, 0]).to(x_t.dtype)), {"ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device,
                                   dtype=complex_dtype(dtype or self.D.dtype))}
