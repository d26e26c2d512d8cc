"""The diagonal SSM block of S4D (arXiv 2206.11893), shared by the mixers built on it.

H independent single-input single-output SSMs, each with a diagonal complex state matrix of
N/2 conjugate pairs: the kernel in Vandermonde form (:func:`ssmlab.ops.ssm_kernel_diag`)
applied by FFT for a whole sequence, the recurrence for one step. S4D is this block with an
output stage; H3, GSS and S4ND use it as their "diagonal SSM".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.mixers.base import at_least_float32, complex_dtype, ssm_dtype, ssm_parameter
from ssmlab.ops import fft_conv, init_log_dt, s4d_legs, ssm_kernel_diag
from ssmlab.ops.kernels import diagonal_state_terms

INITS = ("lin", "inv", "legs")
DISCRETISATIONS = ("zoh", "bilinear")


def s4d_init(init: str, d_model: int, half_state: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (D, N/2) of S4D's diagonal A, in float64.

    ``lin`` (S4D-Lin): ``A_n = -1/2 + i pi n``;
    ``inv`` (S4D-Inv): ``A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1)``;
    ``legs`` (S4D-LegS): the eigenvalues of the normal part of HiPPO-LegS; all from arXiv 2206.11893.
    """
    n = torch.arange(half_state, device=device, dtype=torch.float64)
    real = torch.full((d_model, half_state), -0.5, device=device, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    elif init == "inv":
        big_n = 2 * half_state
        imag = big_n / math.pi * (big_n / (2 * n + 1) - 1)
    elif init == "legs":
        eig = s4d_legs(2 * half_state).to(device)
        real, imag = eig.real.expand(d_model, half_state).clone(), eig.imag
    else:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    return real, imag.expand(d_model, half_state).clone()


class DiagonalSSM(nn.Module):
    """The SSM core of S4D, ``(B, L, H) -> (B, L, H)``: H independent diagonal SSMs with N/2
    conjugate pairs each, ZOH, kernel ``K[l] = 2 Re(sum_n C_n B_bar_n A_bar_n^l)`` applied by FFT,
    plus the skip ``D u``. Used by S4D and, as the "diagonal SSM" of their designs, by H3 and GSS;
    S4ND runs one per axis of an image.

    ``disc`` is the discretisation: ``"zoh"`` (zero-order hold, default) or ``"bilinear"``.
    ``n_ssm`` copies of A (default: one per channel) are shared by consecutive groups of channels,
    as the S4 code's ``n_ssm``; dt and C stay per channel. ``learn_B`` learns B (H, N/2) from
    ones, as the S4 code's diagonal mode does, instead of fixing it to ones.
    With ``bidirectional`` a second C gives a kernel over the following positions (lag 1, 2, ...).
    Parameters (lr hint for dt and A, no weight decay): log_dt (H,), log_A_real and A_imag
    (n_ssm, N/2), C (n, H, N/2, 2) as the real view of complex numbers, and D (H,) unless ``skip=False``.
    """

    def __init__(self, channels: int, d_state: int = 64, *, init: str = "lin", dt_min: float = 0.001,
                 dt_max: float = 0.1, lr: float | None = 0.001, bidirectional: bool = False, skip: bool = True,
                 disc: str = "zoh", n_ssm: int | None = None, learn_B: bool = False, device=None, dtype=None):
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even number >= 2, got {d_state}")
        n_ssm = n_ssm or channels
        if n_ssm < 1 or channels % n_ssm:
            raise ValueError(f"n_ssm={n_ssm} must divide the number of channels {channels}")
        self.n_ssm = n_ssm
        if disc not in DISCRETISATIONS:
            raise ValueError(f"unknown discretisation disc={disc!r}; expected one of {DISCRETISATIONS}")
        self.disc = disc
        dtype = dtype or torch.get_default_dtype()
        self.channels, self.d_state, self.bidirectional = channels, d_state, bidirectional
        half = d_state // 2
        real, imag = s4d_init(init, n_ssm, half, device=device)  # A per copy, shared by its channels
        self.log_dt = ssm_parameter(init_log_dt(channels, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype)),
                                    dtype, lr=lr)
        self.log_A_real = ssm_parameter(torch.log(-real), dtype, lr=lr)
        self.A_imag = ssm_parameter(imag, dtype, lr=lr)
        n_c = 2 if bidirectional else 1
        c = torch.randn(n_c, channels, half, 2, device=device, dtype=torch.float64) * math.sqrt(0.5)
        self.C = nn.Parameter(c.to(dtype))
        d = torch.randn(channels, device=device, dtype=torch.float64)
        self.D = ssm_parameter(d, dtype, weight_decay=None) if skip else None
        # B: ones, absorbed into C (the S4D paper and its minimal code), or learnt per channel from ones
        # (the S4 code's diagonal mode, which H3 uses).
        b = torch.view_as_real(torch.ones(channels, half, device=device, dtype=torch.complex128))
        self.B = ssm_parameter(b, dtype, lr=lr) if learn_B else None

    def _input(self, like: torch.Tensor) -> torch.Tensor:
        """B (H, N/2): learnt, or ones."""
        return torch.ones_like(like) if self.B is None else torch.view_as_complex(self.B.contiguous()).to(like.dtype)

    def _continuous(self):
        """A (H, N/2), C (n, H, N/2) complex and dt (H,)."""
        a = torch.complex(-torch.exp(self.log_A_real), self.A_imag).repeat_interleave(
            self.channels // self.n_ssm, dim=0)
        return a, torch.view_as_complex(self.C.to(self.log_dt.dtype).contiguous()), torch.exp(self.log_dt)

    def discrete(self):
        """``log(A_bar)`` and ``B_bar`` (H, N/2) of the chosen discretisation (B is ones), and C (n, H, N/2)."""
        a, c, dt = self._continuous()
        dta = a * dt[:, None]
        b = self._input(a)
        if self.disc == "zoh":
            return dta, torch.expm1(dta) / a * b, c
        # Bilinear: A_bar = (1 + dt A / 2) / (1 - dt A / 2), B_bar = dt B / (1 - dt A / 2).
        return torch.log1p(dta / 2) - torch.log1p(-dta / 2), dt[:, None] * b / (1 - dta / 2), c

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel (H, L); with ``bidirectional`` (H, 2L), the second half for lags
        1 .. L into the future (the layout of :func:`ssmlab.ops.fft_conv`)."""
        a, c, dt = self._continuous()
        b = self._input(a)
        kernel = ssm_kernel_diag(a, b, c[0], dt, length, method=self.disc, conj_sym=True)
        if self.bidirectional:
            back = ssm_kernel_diag(a, b, c[1], dt, length, method=self.disc, conj_sym=True)
            kernel = torch.cat([kernel, back], dim=-1)
        return kernel

    def forward(self, x, h0=None, return_state: bool = False):
        """x (B, L, H) -> y (B, L, H) and the final state (B, H, N/2) (None unless ``return_state``)."""
        if self.bidirectional and (return_state or h0 is not None):
            raise RuntimeError("a bidirectional SSM has no state")
        u = at_least_float32(x)
        y = fft_conv(u, self.kernel(x.shape[1]).to(u.dtype), D=None if self.D is None else self.D.to(u.dtype),
                     bidirectional=self.bidirectional)
        log_a_bar, b_bar, c = self.discrete()
        extra, h = diagonal_state_terms(u, log_a_bar, b_bar, c[0], h0, return_state)
        return (y if extra is None else y + extra).to(x.dtype), h

    def step(self, x_t, h):
        """x_t (B, H), state (B, H, N/2) -> y_t (B, H), new state."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional SSM cannot step")
        log_a_bar, b_bar, c = self.discrete()
        h = torch.exp(log_a_bar) * h + b_bar * x_t[..., None]  # (B, H, N/2)
        y = 2 * torch.einsum("hn,bhn->bh", c[0], h).real
        return (y if self.D is None else y + self.D * x_t).to(x_t.dtype), h

    def init_state(self, batch_size, *, device=None, dtype=None):
        """Zeros (B, H, N/2), complex (complex128 for float64, else complex64)."""
        device = device if device is not None else self.log_dt.device
        return torch.zeros(batch_size, self.channels, self.d_state // 2, device=device,
                           dtype=complex_dtype(dtype or self.log_dt.dtype))
