"""Liquid-S4: S4 with liquid (input-correlation) terms (Hasani et al., arXiv 2209.12951).

A liquid time-constant SSM ``x' = (A + B u) x + B u`` lets the input modulate the
state transition. Unrolled, its output adds to S4's convolution terms in the
products of consecutive inputs. Liquid-S4 keeps them up to a degree P::

    y_t = (K * u)_t + D u_t + sum_{p=2..P} (C . B_bar^(p)) * u_t u_{t-1} ... u_{t-p+1}

with ``B_bar^(p) = B_bar * (1^T B_bar)^(p-1)`` over the full (conjugate) spectrum and
``B_bar = dt B / (1 - dt Lambda / 2)`` the bilinear input matrix of the diagonal part, which
is the "PB" form of the paper and the form its code computes. The paper's "KB" form,
which also convolves the correlations with powers of A_bar, is not implemented here.
"""

from __future__ import annotations

import torch

from ssmlab.mixers.base import State
from ssmlab.mixers.s4 import S4
from ssmlab.registry import register


@register("mixer", "liquid-s4", description="Liquid-S4: S4 plus input-correlation (liquid) terms",
          paper="2209.12951", variants=[{"d_state": 8}, {"d_state": 8, "liquid_degree": 3}])
class LiquidS4(S4):
    """Liquid-S4 (arXiv 2209.12951): :class:`~ssmlab.mixers.s4.S4` and its options, plus

    Args:
        liquid_degree: P, the highest degree of input correlations (2: products of pairs of
            consecutive inputs, the paper's usual setting).

    State: S4's ``{"ssm"}`` plus ``{"inputs": (B, H, P - 1)}``, the last P - 1 inputs.
    """

    def __init__(self, d_model: int, d_state: int = 64, *, liquid_degree: int = 2, device=None, dtype=None,
                 **options):
        if options.get("bidirectional"):
            raise ValueError("liquid-s4: the bidirectional option is not supported")
        if liquid_degree < 2:
            raise ValueError(f"liquid-s4: liquid_degree must be at least 2, got {liquid_degree}")
        super().__init__(d_model, d_state, device=device, dtype=dtype, **options)
        self.liquid_degree = liquid_degree

    def _liquid_weights(self):
        """(P - 1, H): the weight of the degree-p correlation, p = 2 .. P."""
        lam, _, b, c, dt = self._system()
        b_bar = dt[:, None] * b / (1 - dt[:, None] * lam / 2)  # (H, N/2), half of a conjugate spectrum
        total = 2 * b_bar.sum(-1, keepdim=True).real  # 1^T B_bar over the full spectrum (real)
        weights = []
        for _ in range(2, self.liquid_degree + 1):
            b_bar = b_bar * total
            weights.append(2 * (c[0] * b_bar).sum(-1).real)
        return torch.stack(weights)

    def _extra_terms(self, x, state):
        past = None if state is None else state["inputs"].transpose(1, 2)  # (B, P-1, H)
        full = x if past is None else torch.cat([past.to(x.dtype), x], dim=1)
        offset = full.shape[1] - x.shape[1]
        if past is None:
            full = torch.cat([x.new_zeros(x.shape[0], self.liquid_degree - 1, x.shape[2]), x], dim=1)
            offset = self.liquid_degree - 1
        weights = self._liquid_weights().to(x.dtype)
        extra, product = 0.0, full[:, offset:]
        for i, w in enumerate(weights, start=1):
            product = product * full[:, offset - i:full.shape[1] - i]  # u_t ... u_{t-i}
            extra = extra + w * product
        return extra

    def _forward(self, x, state, return_state):
        y, new_state = super()._forward(x, state, return_state)
        if return_state:
            past = state["inputs"] if state is not None else x.new_zeros(x.shape[0], self.d_model,
                                                                         self.liquid_degree - 1)
            history = torch.cat([past.to(x.dtype), x.transpose(1, 2)], dim=-1)
            new_state["inputs"] = history[..., history.shape[-1] - (self.liquid_degree - 1):]
        return y, new_state

    def _step(self, x_t, state):
        y, new_state = super()._step(x_t, state)
        history = torch.cat([state["inputs"].to(x_t.dtype), x_t[..., None]], dim=-1)
        new_state["inputs"] = history[..., 1:]
        return y, new_state

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        state = super().init_state(batch_size, device=device, dtype=dtype)
        device = device if device is not None else self.D.device
        state["inputs"] = torch.zeros(batch_size, self.d_model, self.liquid_degree - 1, device=device,
                                      dtype=dtype or self.D.dtype)
        return state
