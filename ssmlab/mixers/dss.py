"""DSS: diagonal state spaces (Gupta, Gu, Berant; arXiv 2203.14343).

A diagonal complex state matrix ``Lambda`` (N,) shared by the layer, per-channel
output weights ``W`` (H, N) and steps, with the kernel in one of the paper's two
forms (K over positions k):

* ``exp`` (DSS-exp): ``K_k = Re(sum_n W_n (exp(lambda_n dt) - 1) / lambda_n * exp(k lambda_n dt))``,
  the ZOH-discretised diagonal SSM;
* ``softmax`` (DSS-softmax): ``K_k = Re(sum_n W_n / lambda_n * softmax_k(k lambda_n dt))``, the
  powers normalised over the positions of each state. The normaliser runs over ``l_max``
  positions (fixed, rather than the input's length), so the kernel of a length-L input is a
  prefix of the kernel of a longer one and the layer has an exact recurrent form.

Lambda is initialised to the eigenvalues of the normal part of HiPPO-LegS (skew-HiPPO),
as in the paper, and its real part is kept negative. As in the official code, each channel
has separate steps for the real and imaginary parts of Lambda (``dt Lambda = dt_re Re(Lambda)
+ i dt_im Im(Lambda)``), W, Lambda and the steps get learning rate 0.001 and no weight decay,
and the output stage is ``W GELU(y)`` with W: H -> H (``activation="glu"`` gives S4's GLU stage).
The official code normalises DSS-softmax over the input's length, which makes the kernel
depend on it; here it is over ``l_max`` (see above). It also regularises the softmax's
``1 / (lambda * sum_k exp(k dt lambda))`` as ``conj(z) / (|z|^2 + 1e-7)``; here it is exact
(1e-6 apart in a float64 layer output at L = 33, parameters copied across).
"""

from __future__ import annotations

import math

import torch

from ssmlab.layers import GELUGLUOutput
from ssmlab.mixers.base import Mixer, State, at_least_float32, complex_dtype, ssm_dtype, ssm_parameter
from ssmlab.ops import fft_conv, init_log_dt, s4d_legs
from ssmlab.ops.kernels import diagonal_state_terms, ssm_kernel_diag_discrete
from ssmlab.registry import register

VERSIONS = ("exp", "softmax")


@register("mixer", "dss", description="Diagonal state spaces (DSS-exp, DSS-softmax)", paper="2203.14343")
class DSS(Mixer):
    """The DSS layer (arXiv 2203.14343) with the S4-style output stage.

    Args:
        d_model: channels H.
        d_state: N, the number of complex states (64).
        version: ``"exp"`` (default) or ``"softmax"``.
        l_max: length over which DSS-softmax normalises (1024).
        dt_min, dt_max: per-channel step initialised log-uniform in [0.001, 0.1].
        lr: learning rate for Lambda and dt (0.001), which get no weight decay.
        dropout: dropout after the activation (0.0).
        sep_dt: separate steps for the real and imaginary parts of Lambda (True, as the official code).
        activation: ``None`` (default: a linear H -> H output) or ``"glu"`` (H -> 2H and a GLU).

    State: ``{"ssm": (B, H, N)}`` complex.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, version: str = "exp", l_max: int = 1024,
                 dt_min: float = 0.001, dt_max: float = 0.1, lr: float | None = 0.001, dropout: float = 0.0,
                 sep_dt: bool = True, activation: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if version not in VERSIONS:
            raise ValueError(f"dss: version must be one of {VERSIONS}, got {version!r}")
        if activation not in (None, "glu"):
            raise ValueError(f"dss: activation must be None or 'glu', got {activation!r}")
        if d_state < 1 or l_max < 1:
            raise ValueError(f"dss: d_state and l_max must be positive, got {d_state}, {l_max}")
        dtype = self.factory["dtype"]
        self.d_state, self.version, self.l_max = d_state, version, l_max
        eig = s4d_legs(2 * d_state).to(device)  # N eigenvalues with positive imaginary part
        self.log_Lambda_real = ssm_parameter(torch.log(-eig.real), dtype, lr=lr)
        self.Lambda_imag = ssm_parameter(eig.imag, dtype, lr=lr)
        w = torch.randn(d_model, d_state, 2, device=device, dtype=torch.float64) * math.sqrt(0.5)
        self.W = ssm_parameter(w, dtype, lr=lr)
        log_dt = init_log_dt(d_model, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype))
        if sep_dt:
            log_dt = log_dt[:, None].repeat(1, 2)  # (H, 2): real and imaginary parts start from one step
        self.log_dt = ssm_parameter(log_dt, dtype, lr=lr)
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=ssm_dtype(dtype)), dtype, weight_decay=None)
        self.output = GELUGLUOutput(d_model, dropout, glu=activation == "glu", **self.factory)

    def _system(self):
        """dt * Lambda (H, N), the input weights B_bar (H, N) and W (H, N), complex."""
        lam = torch.complex(-torch.exp(self.log_Lambda_real), self.Lambda_imag)  # (N,)
        dt = torch.exp(self.log_dt)
        if dt.dim() == 1:
            dtl = lam * dt[:, None]  # (H, N)
        else:
            dtl = torch.complex(lam.real * dt[:, :1], lam.imag * dt[:, 1:])  # (H, N)
        if self.version == "exp":
            b_bar = torch.expm1(dtl) / lam
        else:
            # 1 / (lambda * sum_{k < l_max} exp(k dt lambda)) = (exp(dt lambda) - 1) / (lambda (exp(l_max dt lambda) - 1))
            b_bar = torch.expm1(dtl) / (lam * torch.expm1(self.l_max * dtl))
        return dtl, b_bar, torch.view_as_complex(self.W.contiguous())

    def _forward(self, x, state, return_state):
        length = x.shape[1]
        dtl, b_bar, w = self._system()
        kernel = ssm_kernel_diag_discrete(dtl, b_bar, w, length).real  # (H, L)
        u = at_least_float32(x)
        y = fft_conv(u, kernel.to(u.dtype), D=self.D.to(u.dtype))
        extra, h = diagonal_state_terms(u, dtl, b_bar, w, None if state is None else state["ssm"], return_state,
                                        scale=1.0)
        y = (y if extra is None else y + extra).to(x.dtype)
        return self.output(y), ({"ssm": h} if return_state else None)

    def _step(self, x_t, state):
        dtl, b_bar, w = self._system()
        h = torch.exp(dtl) * state["ssm"] + b_bar * x_t[..., None]
        y = (torch.einsum("hn,bhn->bh", w, h).real.to(x_t.dtype) + self.D * x_t).to(x_t.dtype)
        return self.output(y), {"ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state, device=device,
                                   dtype=complex_dtype(dtype or self.D.dtype))}
