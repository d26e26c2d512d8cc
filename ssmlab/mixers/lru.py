"""LRU: the Linear Recurrent Unit (Orvieto et al., arXiv 2303.06349).

A complex diagonal linear recurrence with an exponential parameterisation of
the eigenvalues, initialised uniformly on a ring of the complex plane, and a
normalisation of the input by ``gamma = sqrt(1 - |lambda|^2)``::

    h_t = lambda * h_{t-1} + gamma * (B u_t)      (N,) complex
    y_t = Re(C h_t) + D * u_t

Training and forward use the parallel (chunked associative) linear scan; ``step``
is one iteration of the recurrence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.mixers.base import Mixer, State, complex_dtype, ssm_parameter
from ssmlab.ops import linear_scan
from ssmlab.registry import register


@register("mixer", "lru", description="Linear Recurrent Unit: complex diagonal recurrence, ring init",
          paper="2303.06349")
class LRU(Mixer):
    """The LRU layer (arXiv 2303.06349, appendix A).

    Args:
        d_model: width H.
        d_state: number of complex states N (default 64).
        r_min, r_max: eigenvalue moduli are initialised with ``|lambda|^2`` uniform in
            ``[r_min^2, r_max^2]`` (defaults 0.0 and 1.0, as in the paper's code; the paper uses
            0.9 and 0.999 on Long Range Arena).
        max_phase: eigenvalue phases uniform in ``[0, max_phase]`` (default 2 pi; pi / 10 on LRA).
        lr: learning rate for the recurrence parameters (nu, theta, gamma), which get no weight
            decay (default None: the trainer's).
        backend: ``linear_scan`` backend (default: the best available).

    ``lambda = exp(-exp(nu_log) + i exp(theta_log))``; B and C are complex with Glorot-style
    scales ``1/sqrt(2H)`` and ``1/sqrt(N)``; D is standard normal.

    State: ``{"h": (B, N)}`` complex.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, lr: float | None = None, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"lru: need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if d_state < 1 or max_phase <= 0:
            raise ValueError(f"lru: d_state and max_phase must be positive, got {d_state}, {max_phase}")
        dtype = self.factory["dtype"]
        self.d_state, self.backend = d_state, backend
        f64 = {"device": device, "dtype": torch.float64}
        u1, u2 = torch.rand(d_state, **f64), torch.rand(d_state, **f64)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2)
        modulus = torch.exp(-torch.exp(nu_log))
        gamma_log = torch.log(torch.sqrt(1 - modulus**2))
        self.nu_log = ssm_parameter(nu_log, dtype, lr=lr)
        self.theta_log = ssm_parameter(theta_log, dtype, lr=lr)
        self.gamma_log = ssm_parameter(gamma_log, dtype, lr=lr)
        self.B_re = nn.Parameter((torch.randn(d_state, d_model, **f64) / math.sqrt(2 * d_model)).to(dtype))
        self.B_im = nn.Parameter((torch.randn(d_state, d_model, **f64) / math.sqrt(2 * d_model)).to(dtype))
        self.C_re = nn.Parameter((torch.randn(d_model, d_state, **f64) / math.sqrt(d_state)).to(dtype))
        self.C_im = nn.Parameter((torch.randn(d_model, d_state, **f64) / math.sqrt(d_state)).to(dtype))
        self.D = ssm_parameter(torch.randn(d_model, **f64), dtype, weight_decay=None)

    def _params(self):
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))  # (N,)
        dtype = self.nu_log.dtype
        b = torch.complex(self.B_re.to(dtype), self.B_im.to(dtype)) * torch.exp(self.gamma_log)[:, None]  # (N, H)
        return lam, b, torch.complex(self.C_re.to(dtype), self.C_im.to(dtype))

    def _forward(self, x, state, return_state):
        lam, b, c = self._params()
        bu = torch.einsum("blh,nh->bln", x.to(b.dtype), b)  # (B, L, N)
        h = linear_scan(lam.expand_as(bu), bu, initial_state=None if state is None else state["h"],
                        backend=self.backend)
        y = (torch.einsum("hn,bln->blh", c, h).real.to(x.dtype) + self.D * x).to(x.dtype)
        return y, ({"h": h[:, -1]} if return_state else None)

    def _step(self, x_t, state):
        lam, b, c = self._params()
        h = lam * state["h"] + x_t.to(b.dtype) @ b.T  # (B, N)
        return ((h @ c.T).real.to(x_t.dtype) + self.D * x_t).to(x_t.dtype), {"h": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"h": torch.zeros(batch_size, self.d_state, device=device, dtype=complex_dtype(dtype or self.D.dtype))}
