"""S4: the structured state space sequence model (Gu, Goel, Re; arXiv 2111.00396).

Each channel is a SISO SSM whose state matrix is diagonal plus low rank,
``A = diag(Lambda) - P P^*``, initialised from HiPPO-LegS (arXiv 2008.07669) in
its NPLR form. As in the S4 code, only one eigenvalue of each conjugate pair is
stored (N/2 of them, with the matching entries of P, B and C); the system is the
full one over the conjugate spectrum, ``Lambda_f = [Lambda, conj(Lambda)]``,
``P_f = [P, conj(P)]``, which is unitarily similar to HiPPO-LegS at initialisation.
Its rank-one term couples the two halves, so the kernel is not twice the real part
of the half system's (that shortcut holds only for diagonal systems such as S4D).
Forward computes the length-L kernel with the Cauchy kernel and the Woodbury
identity at the roots of unity (bilinear discretisation) and applies it with an FFT;
step runs the discretised recurrence of the full system on the stored half state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.layers import GELUGLUOutput
from ssmlab.mixers.base import Mixer, State, at_least_float32, ssm_dtype, ssm_parameter
from ssmlab.ops import discretize_dplr, dplr, fft_conv, init_log_dt, ssm_kernel_dplr
from ssmlab.registry import register


def _transition(a_bar, h):
    """``a_bar h`` for a state h (B, H, M): a_bar (H, M, M), or (H, M, 2M) acting on ``[h, conj(h)]``
    (the first M rows of a conjugate-symmetric system over 2M states)."""
    if a_bar.shape[-1] != h.shape[-1]:
        h = torch.cat([h, h.conj()], dim=-1)
    return (a_bar @ h[..., None])[..., 0]


def dense_state_terms(x, a_bar, b_bar, c, h0, return_state: bool, scale: float = 2.0):
    """What a state adds to an SSM with a dense transition computed as a convolution.

    The system is ``h_t = a_bar h_{t-1} + b_bar u_t`` with b_bar and c (H, M), a_bar (H, M, M),
    or (H, M, 2M) for the kept half of a conjugate-symmetric system (a_bar then acts on
    ``[h, conj(h)]``), and ``y_t = scale * Re(c h_t)``. Returns the free response of ``h0``
    (B, H, M) to add to the output (B, L, H), or None without ``h0``; and the state after the
    last position when ``return_state``, else None. It runs the recurrence position by position:
    it serves streaming and chunked inference, not training on whole sequences.
    """
    h = torch.zeros(x.shape[0], *b_bar.shape, dtype=a_bar.dtype, device=x.device) if h0 is None else h0
    free, responses = h0, []
    for u_t in x.unbind(1):
        h = _transition(a_bar, h) + b_bar * u_t[..., None].to(b_bar.dtype)
        if h0 is not None:
            free = _transition(a_bar, free)
            responses.append(free)
    extra = None
    if h0 is not None:
        extra = scale * torch.einsum("hm,blhm->blh", c, torch.stack(responses, 1)).real.to(x.dtype)
    return extra, (h if return_state else None)


@register("mixer", "s4", description="S4: DPLR SSM, HiPPO-LegS init, Cauchy kernel, FFT conv",
          paper="2111.00396")
class S4(Mixer):
    """The S4 layer (arXiv 2111.00396) with the output stage of the S4 code.

    Args:
        d_model: channels H.
        d_state: state size N, kept as N/2 conjugate pairs (64).
        n_ssm: number of distinct (Lambda, P, B) triples shared by the channels; ``None`` gives
            every channel its own (the S4 code's default).
        rank: rank of the low-rank term P (1, as for HiPPO-LegS; extra rows start at zero).
        dt_min, dt_max: the per-channel step is initialised log-uniform in [0.001, 0.1].
        lr: learning rate for Lambda, P, B and dt (0.001, as in the S4 code; ``None`` uses the
            trainer's); they get no weight decay.
        dropout: dropout after the activation (0.0).
        bidirectional: a second C gives a kernel over the following positions (default False;
            the layer is then not causal).

    The system is the full one over the conjugate spectrum (see the module docstring), as in
    the official code's ``SSMKernelDPLR`` (github.com/state-spaces/s4). Conventions kept
    differently on purpose:

    * C is learnt in its plain form (not S4's C~): the kernel of any length L converts it to
      ``C~ = (I - A_bar^L)^T C`` on the fly, so one layer serves every sequence length and its
      recurrent step is exact;
    * B is HiPPO-LegS's B in the eigenbasis, exactly; the official code clips its imaginary
      part to [-2, 2] (``B_clip=2.0``), which changes B from N = 4 on;
    * the stored half is the eigenvalues with positive imaginary part (the official code keeps
      their conjugates, with ``A_imag`` stored as a positive number and negated); the full
      systems are the same.

    Output: ``GLU(W GELU(K * u + D u))``.

    State: ``{"ssm": (B, H, N/2)}`` complex, the kept half of the full state ``[h, conj(h)]``.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, n_ssm: int | None = None, rank: int = 1,
                 dt_min: float = 0.001, dt_max: float = 0.1, lr: float | None = 0.001, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None):
        super().__init__(d_model)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"s4: d_state must be an even number >= 2, got {d_state}")
        n_ssm = n_ssm or d_model
        if d_model % n_ssm or rank < 1:
            raise ValueError(f"s4: n_ssm={n_ssm} must divide d_model={d_model} and rank must be >= 1")
        dtype = dtype or torch.get_default_dtype()
        factory = {"device": device, "dtype": dtype}
        self.d_state, self.n_ssm, self.rank = d_state, n_ssm, rank
        self.bidirectional = bidirectional
        self.causal = not bidirectional
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
        self.output = GELUGLUOutput(d_model, dropout, **factory)

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
            if return_state:
                raise RuntimeError(f"mixer {self.registry_name!r} with bidirectional=True has no state to return")
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
        if self.bidirectional:
            raise RuntimeError(f"mixer {self.registry_name!r} with bidirectional=True cannot step")
        lam, p, b, c, dt = self._system()
        a_bar, b_bar = self._discrete_half(lam, p, b, dt)
        u_t = self._ssm_input(x_t[:, None], state)[:, 0]
        h = _transition(a_bar, state["ssm"]) + b_bar * u_t[..., None].to(b_bar.dtype)
        y = 2 * torch.einsum("hn,bhn->bh", c[0], h).real.to(x_t.dtype) + self.D * x_t
        extra = self._extra_terms(x_t[:, None], state)
        return self.output((y if extra is None else y + extra[:, 0]).to(x_t.dtype)), {"ssm": h}

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        device = device if device is not None else self.D.device
        dtype = dtype or self.D.dtype
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device, dtype=cdtype)}
