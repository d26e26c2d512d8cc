"""LSSL: the linear state space layer (Gu et al., arXiv 2110.13985).

The original continuous-time SSM layer: a dense HiPPO-LegS state matrix A (N, N)
shared by the layer, a learnable step per channel, bilinear (generalised
bilinear transform) discretisation, and per-channel C and D. Forward is the
convolution with the kernel ``K[k] = C A_bar^k B_bar`` obtained by unrolling the
recurrence (O(L N^2) per channel: LSSL's own "convolutional view"); step is the
recurrence itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.layers import GELUGLUOutput
from ssmlab.mixers.base import Mixer, State, at_least_float32, ssm_buffer, ssm_dtype, ssm_parameter
from ssmlab.ops import discretize_dense, fft_conv, hippo, init_log_dt, ssm_kernel_dense
from ssmlab.ops.kernels import apply_transition, dense_state_terms
from ssmlab.registry import register


def tridiagonal_init(measure: str, n: int) -> dict[str, torch.Tensor]:
    """The official code's tridiagonal-inverse parameters (float64) that represent ``measure``'s A and B."""
    k = torch.arange(n, dtype=torch.float64)
    band = lambda value: torch.nn.functional.pad(torch.ones(n - 1, dtype=torch.float64), (1, 1)) * value  # noqa: E731
    ones = torch.ones(n, dtype=torch.float64)
    if measure == "legs":
        p = torch.sqrt(2 * k + 1)
        return {"dl": band(-1.0), "d": ones, "du": band(0.0), "pl": p, "pr": p.clone(), "c": -k / (2 * k + 1),
                "b": ones.clone()}
    if measure == "lagt":
        return {"dl": band(-1.0), "d": ones, "du": band(0.0), "pl": ones.clone(), "pr": ones.clone(),
                "c": -0.5 * ones, "b": ones.clone()}
    if measure == "legt":
        d = torch.zeros(n, dtype=torch.float64)
        d[0] += 0.5
        d[-1] += 0.5
        p = torch.sqrt(2 * k + 1)
        return {"dl": band(-0.5), "d": d, "du": band(0.5), "pl": p, "pr": p.clone(), "c": torch.zeros(n, dtype=torch.float64),
                "b": ones.clone()}
    raise ValueError(f"lssl: the structured learnt A exists for measures legs, legt, lagt; got {measure!r} "
                     f"(use learn_A='dense')")


@register("mixer", "lssl", description="Linear state space layer: dense HiPPO A, unrolled kernel",
          paper="2110.13985")
class LSSL(Mixer):
    """The LSSL layer (arXiv 2110.13985) with the official code's output stage, ``W GELU(y)``.

    Args:
        d_model: channels H.
        d_state: N (64).
        measure: HiPPO measure of the initial A: "legs" (default), "legt", "lagt", "fout".
        learn_A: ``False`` (default, LSSL-fixed: the HiPPO A and B as buffers); ``True`` or
            ``"tridiagonal"``: learnt in the official code's structured form (below); ``"dense"``:
            A (N, N) and B (N,) learnt as they are.
        dt_min, dt_max: per-channel step initialised log-uniform in [0.001, 0.1].
        lr: learning rate for A, B and dt (0.001), which get no weight decay.
        dropout: dropout after the activation (0.0).
        activation: ``None`` (default: a linear H -> H output, as the official Platypus layer) or
            ``"glu"`` (H -> 2H and a GLU, S4's output stage).

    The structured learnt A of the official code, shared by the channels, is
    ``A = -diag(p_l) (T^-1 + diag(c)) diag(p_r)`` and ``B = p_l * b``, with ``T`` tridiagonal
    (sub-diagonal ``dl``, diagonal ``d``, super-diagonal ``du``; ``dl``, ``du`` of length N + 1
    with unused ends, as there): 7N + 2 parameters. It is initialised to represent the
    measure exactly: HiPPO-LegS (``T`` = I minus the shift, ``p = sqrt(2n + 1)``,
    ``c_n = -n / (2n + 1)``), HiPPO-LagT (``p = 1``, ``c = -1/2``) and LegT (``d`` = 1/2 at both
    corners, ``dl = -1/2``, ``du = 1/2``, ``p = sqrt(2n + 1)``, ``c = 0``: twice our
    ``hippo("legt")`` and its B, which only rescales time).

    State: ``{"ssm": (B, H, N)}``.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, measure: str = "legs", learn_A: bool = False,
                 dt_min: float = 0.001, dt_max: float = 0.1, lr: float | None = 0.001, dropout: float = 0.0,
                 activation: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if activation not in (None, "glu"):
            raise ValueError(f"lssl: activation must be None or 'glu', got {activation!r}")
        dtype = self.factory["dtype"]
        self.d_state = d_state
        if learn_A not in (False, True, "tridiagonal", "dense"):
            raise ValueError(f"lssl: learn_A must be False, True, 'tridiagonal' or 'dense', got {learn_A!r}")
        self.learn_A = "tridiagonal" if learn_A is True else learn_A
        if self.learn_A == "tridiagonal":
            for name, value in tridiagonal_init(measure, d_state).items():
                setattr(self, f"A_{name}", ssm_parameter(value.to(device=device), dtype, lr=lr))
        else:
            A, B = hippo(measure, d_state, dtype=ssm_dtype(dtype))
            if self.learn_A == "dense":
                self.A = ssm_parameter(A.to(device), dtype, lr=lr)
                self.B = ssm_parameter(B.to(device), dtype, lr=lr)
            else:
                self.register_buffer("A", ssm_buffer(A.to(device), dtype))
                self.register_buffer("B", ssm_buffer(B.to(device), dtype))
        c = torch.randn(d_model, d_state, device=device, dtype=torch.float64) / math.sqrt(d_state)
        self.C = nn.Parameter(c.to(dtype))
        self.log_dt = ssm_parameter(init_log_dt(d_model, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype)),
                                    dtype, lr=lr)
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=ssm_dtype(dtype)), dtype, weight_decay=None)
        self.output = GELUGLUOutput(d_model, dropout, glu=activation == "glu", **self.factory)

    def system(self):
        """The continuous A (N, N) and B (N,)."""
        if self.learn_A != "tridiagonal":
            return self.A, self.B
        n = self.d_state
        T = torch.diag(self.A_d) + torch.diag(self.A_dl[1:n], -1) + torch.diag(self.A_du[1:n], 1)
        inv = torch.linalg.solve(T, torch.eye(n, dtype=T.dtype, device=T.device))
        A = -(self.A_pl[:, None] * (inv + torch.diag(self.A_c)) * self.A_pr[None, :])
        return A, self.A_pl * self.A_b

    def _discrete(self):
        A, B = self.system()
        return discretize_dense(A, B, torch.exp(self.log_dt), "bilinear")  # (H, N, N), (H, N)

    def _forward(self, x, state, return_state):
        a_bar, b_bar = self._discrete()
        u, c = at_least_float32(x), self.C.to(a_bar.dtype)
        kernel = ssm_kernel_dense(a_bar, b_bar, c, x.shape[1])  # (H, L)
        y = fft_conv(u, kernel.to(u.dtype), D=self.D.to(u.dtype))
        if state is not None or return_state:
            extra, h = dense_state_terms(u, a_bar, b_bar, c, None if state is None else state["ssm"],
                                         return_state, scale=1.0)
            y = y if extra is None else y + extra
        return self.output(y.to(x.dtype)), ({"ssm": h} if return_state else None)

    def _step(self, x_t, state):
        a_bar, b_bar = self._discrete()
        h = apply_transition(a_bar, state["ssm"]) + b_bar * x_t[..., None]
        return self.output(((self.C.to(h.dtype) * h).sum(-1) + self.D * x_t).to(x_t.dtype)), {"ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state, device=device,
                                   dtype=torch.promote_types(dtype or self.D.dtype, torch.float32))}
