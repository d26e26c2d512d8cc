"""GSS: the gated state space layer (Mehta, Gupta, Cutkosky, Neyshabur; arXiv 2206.13947).

A diagonal SSM run at a reduced width between gating projections::

    v = GELU(W_v u)              (F = expand * D)
    s = GELU(W_s u)              (d_ssm channels, fewer than D)
    y = W_o ((W_c ssm(s)) * v)

The paper's SSM is DSS-exp (arXiv 2203.14343), which is S4D's zero-order-hold
diagonal kernel; it is initialised, as in DSS, from the eigenvalues of the
normal part of HiPPO-LegS (S4D-LegS). Norm and residual are the backbone's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ssmlab.layers.diagonal_ssm import DiagonalSSM
from ssmlab.mixers.base import Mixer, State
from ssmlab.registry import register


@register("mixer", "gss", description="Gated state space: reduced-width diagonal SSM between gates",
          paper="2206.13947")
class GSS(Mixer):
    """The GSS layer (arXiv 2206.13947; the paper's E, F, H are d_model, expand * d_model, d_ssm).

    Args:
        d_model: width D.
        d_state: state size N of the diagonal SSM (64).
        expand: width of the gating branch F = expand * D (4, as in the paper: F = 4096 for E = 1024).
        d_ssm: channels of the SSM; default ``max(1, D // 4)`` (the paper: H = 256 for E = 1024).
        lr: learning rate for the SSM's A and dt (0.001), which get no weight decay.
        dt_min, dt_max: the SSM's per-channel step is initialised log-uniform in [0.001, 0.1].

    State: ``{"ssm": (B, d_ssm, N/2)}`` complex.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, expand: int = 4, d_ssm: int | None = None,
                 lr: float | None = 0.001, dt_min: float = 0.001, dt_max: float = 0.1, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        self.d_ssm = d_ssm or max(1, d_model // 4)
        if expand < 1 or self.d_ssm < 1:
            raise ValueError(f"gss: expand and d_ssm must be positive, got {expand}, {self.d_ssm}")
        width = expand * d_model
        self.gate_proj = nn.Linear(d_model, width, **self.factory)
        self.ssm_in = nn.Linear(d_model, self.d_ssm, **self.factory)
        self.ssm = DiagonalSSM(self.d_ssm, d_state, init="legs", lr=lr, dt_min=dt_min, dt_max=dt_max, **self.factory)
        self.ssm_out = nn.Linear(self.d_ssm, width, **self.factory)
        self.out_proj = nn.Linear(width, d_model, **self.factory)

    def _forward(self, x, state, return_state):
        y, h = self.ssm(F.gelu(self.ssm_in(x)), None if state is None else state["ssm"], return_state)
        out = self.out_proj(self.ssm_out(y) * F.gelu(self.gate_proj(x)))
        return out, ({"ssm": h} if return_state else None)

    def _step(self, x_t, state):
        y, h = self.ssm.step(F.gelu(self.ssm_in(x_t)), state["ssm"])
        return self.out_proj(self.ssm_out(y) * F.gelu(self.gate_proj(x_t))), {"ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"ssm": self.ssm.init_state(batch_size, device=device, dtype=dtype)}
