"""S4D: the diagonal structured state space layer (arXiv 2206.11893).

Each of the D channels is an independent single-input single-output SSM with
a diagonal complex state matrix of N/2 conjugate pairs, discretised by
zero-order hold. Forward computes the length-L convolution kernel in
Vandermonde form and applies it with an FFT; step runs the recurrence.
Both are followed by GELU and a GLU output projection, as in the S4D code.
"""

from __future__ import annotations

from ssmlab.layers import GELUGLUOutput
from ssmlab.layers.diagonal_ssm import DiagonalSSM
from ssmlab.mixers.base import Mixer, State
from ssmlab.registry import register


@register("mixer", "s4d", description="Diagonal SSM (S4D), FFT convolution forward, recurrent step",
          paper="2206.11893")
class S4D(Mixer):
    """S4D layer (Gu, Gupta, Goel, Re; arXiv 2206.11893).

    Args:
        d_model: channels D (each its own SSM).
        d_state: state size N per channel, stored as N/2 complex conjugate pairs (64).
        init: ``"lin"`` (S4D-Lin, default), ``"inv"`` (S4D-Inv) or ``"legs"`` (S4D-LegS).
        dt_min, dt_max: the step is initialised log-uniform in [0.001, 0.1].
        lr: learning rate for log_dt and A (0.001; ``None`` uses the trainer's); these get no weight decay.
        dropout: dropout after the activation (0.0).
        discretization: ``"zoh"`` (zero-order hold, default) or ``"bilinear"``, the two the
            S4D paper compares (section 3 / appendix of arXiv 2206.11893).
        n_ssm: number of distinct A (default D, one per channel); D / n_ssm channels share each.
        bidirectional: a second C gives a kernel over the following positions (lag 1, 2, ...),
            from the same A and dt, as in the S4 code's bidirectional mode (default False; the
            layer is then not causal and has no step).

    Discretisation is zero-order hold by default, ``A_bar = exp(dt A)``,
    ``B_bar = (exp(dt A) - 1) / A``, or bilinear, ``A_bar = (1 + dt A/2) / (1 - dt A/2)``,
    ``B_bar = dt / (1 - dt A/2)`` (B is fixed to ones and absorbed into C, as in the
    S4D code); the kernel is ``K[l] = 2 Re(sum_n C_n B_bar_n A_bar_n^l)``. The layer
    output is ``GLU(W (GELU(K * u + D u)))``.

    State: ``{"ssm": (B, D, N/2)}`` complex, the SSM state after the last position.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, init: str = "lin", dt_min: float = 0.001,
                 dt_max: float = 0.1, lr: float | None = 0.001, dropout: float = 0.0, bidirectional: bool = False,
                 discretization: str = "zoh", n_ssm: int | None = None, device=None, dtype=None):
        super().__init__(d_model, bidirectional=bidirectional, device=device, dtype=dtype)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"s4d: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        try:
            self.ssm = DiagonalSSM(d_model, d_state, init=init, dt_min=dt_min, dt_max=dt_max, lr=lr,
                                   bidirectional=bidirectional, disc=discretization, n_ssm=n_ssm, **self.factory)
        except ValueError as exc:
            raise ValueError(f"s4d: {exc}") from exc
        self.d_state, self.init = d_state, init
        self.output = GELUGLUOutput(d_model, dropout, **self.factory)

    def _forward(self, x, state, return_state):
        y, h = self.ssm(x, None if state is None else state["ssm"], return_state)
        return self.output(y), ({"ssm": h} if return_state else None)

    def _step(self, x_t, state):
        y, h = self.ssm.step(x_t, state["ssm"])
        return self.output(y), {"ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"ssm": self.ssm.init_state(batch_size, device=device, dtype=dtype)}
