"""Liquid-S4: S4 with liquid (input-correlation) terms (Hasani et al., arXiv 2209.12951).

A liquid time-constant SSM ``x' = (A + B u) x + B u`` lets the input modulate the
state transition. Unrolled, its output adds to S4's convolution terms in the
products of consecutive inputs. Liquid-S4 keeps them up to a degree P::

    y_t = (K * u)_t + D u_t + sum_{p=2..P} (C . B_bar^(p)) * u_t u_{t-1} ... u_{t-p+1}

with ``B_bar^(p) = B_bar * (1^T B_bar)^(p-1)`` over the full (conjugate) spectrum and
``B_bar = dt B / (1 - dt Lambda / 2)`` the bilinear input matrix of the diagonal part: the
paper's "PB" kernel (``liquid_kernel="pb"``). The paper's "KB" kernel (``"kb"``) also
convolves each correlation with the S4 kernel scaled by ``(1^T B_bar)^(p-1)``::

    y_t = (K * u)_t + D u_t + sum_{p=2..P} (1^T B_bar)^(p-1) (K * u^(p))_t,   u^(p)_t = u_t ... u_{t-p+1}

which is the S4 system driven by ``u + sum_p (1^T B_bar)^(p-1) u^(p)``, so it keeps an exact
recurrent step. K is S4's kernel, that of the full DPLR system over the conjugate spectrum
(see :mod:`ssmlab.mixers.s4`). Both follow the paper's equations as causal operations. The
official code (github.com/raminmh/liquid-s4) differs in these conventions, which we keep
differently on purpose:

* it reverses the correlation sequence in time before adding or convolving it, which makes
  the layer non-causal; we do not reproduce it;
* by default (``allcombs=True``) its correlations are products over index combinations taken
  from the last positions of the whole sequence, and with ``allcombs=False`` its degree-p
  product is built by repeated shifting (``u_t u_{t-1}^2 u_{t-2}`` at p = 3); we use products
  of p consecutive inputs, as in the paper (the two agree at p = 2, the default);
* its liquid weights read tensors stored on its kernel wrapper at construction: Lambda and C
  are copies that are never trained (C the conjugate of the kernel's initial C), while B and
  dt share storage with the parameters only until the module is moved or cast; ours use the
  trained parameters; it also casts the PB term to float32;
* its KB term multiplies the real FFT (size 2L) of the reversed correlations by a complex FFT
  of size L + 1 of the scaled kernel, which is not a convolution; ours is the causal
  convolution written above, so the correlations also drive the recurrent state;
* its recurrent step is S4's alone, without liquid terms; ours includes them, so step == forward.

Its optional squashing of the correlations (``lcontract``: tanh or ``1.7159 tanh(0.666 x)``,
LeCun's scaled tanh with the official code's constant) is the ``correlation_activation`` option.
"""

from __future__ import annotations

import torch

from ssmlab.layers.dplr_ssm import DPLRMixer
from ssmlab.mixers.base import State
from ssmlab.registry import register

# Squashing of the correlation products (the official code's ``lcontract``, with its constants).
ACTIVATIONS = {None: lambda t: t, "tanh": torch.tanh, "lecun": lambda t: 1.7159 * torch.tanh(0.666 * t)}


@register("mixer", "liquid-s4", description="Liquid-S4: S4 plus input-correlation (liquid) terms",
          paper="2209.12951")
class LiquidS4(DPLRMixer):
    """Liquid-S4 (arXiv 2209.12951): :class:`~ssmlab.mixers.s4.S4` and its options, plus

    Args:
        liquid_degree: P, the highest degree of input correlations (2: products of pairs of
            consecutive inputs, the paper's usual setting).
        liquid_kernel: ``"pb"`` (default) or ``"kb"``, the two liquid kernels of the paper
            (``"polyb"`` is accepted for ``"pb"``, the official code's name).
        correlation_activation: ``None`` (default), ``"tanh"`` or ``"lecun"``, applied to each
            correlation product.

    State: S4's ``{"ssm"}`` plus ``{"inputs": (B, H, P - 1)}``, the last P - 1 inputs.
    """

    def __init__(self, d_model: int, d_state: int = 64, *, liquid_degree: int = 2, liquid_kernel: str = "pb",
                 correlation_activation: str | None = None, device=None, dtype=None, **options):
        if options.get("bidirectional"):
            raise ValueError("liquid-s4: the bidirectional option is not supported")
        if liquid_degree < 2:
            raise ValueError(f"liquid-s4: liquid_degree must be at least 2, got {liquid_degree}")
        liquid_kernel = {"polyb": "pb"}.get(liquid_kernel, liquid_kernel)
        if liquid_kernel not in ("pb", "kb"):
            raise ValueError(f"liquid-s4: liquid_kernel must be 'pb' or 'kb', got {liquid_kernel!r}")
        if correlation_activation not in ACTIVATIONS:
            raise ValueError(f"liquid-s4: correlation_activation must be one of {sorted(ACTIVATIONS, key=str)}, "
                             f"got {correlation_activation!r}")
        super().__init__(d_model, d_state, device=device, dtype=dtype, **options)
        self.liquid_degree, self.liquid_kernel = liquid_degree, liquid_kernel
        self.correlation_activation = correlation_activation

    def _input_sum(self):
        """(H, N/2) bilinear B_bar of the diagonal part (half of a conjugate spectrum) and 1^T B_bar (H, 1), real."""
        lam, _, b, _, dt = self._system()
        b_bar = dt[:, None] * b / (1 - dt[:, None] * lam / 2)
        return b_bar, 2 * b_bar.sum(-1, keepdim=True).real

    def _liquid_weights(self):
        """(P - 1, H): the weight of the degree-p correlation, p = 2 .. P, in the PB kernel."""
        _, c = self._system()[2:4]
        b_bar, total = self._input_sum()
        weights = []
        for _ in range(2, self.liquid_degree + 1):
            b_bar = b_bar * total
            weights.append(2 * (c[0] * b_bar).sum(-1).real)
        return torch.stack(weights)

    def _correlations(self, x, state):
        """Products ``u_t u_{t-1} ... u_{t-p+1}`` (B, L, H) for p = 2 .. P, from the stored past inputs."""
        past = None if state is None else state["inputs"].transpose(1, 2).to(x.dtype)  # (B, P-1, H)
        if past is None:
            past = x.new_zeros(x.shape[0], self.liquid_degree - 1, x.shape[2])
        full, offset = torch.cat([past, x], dim=1), past.shape[1]
        product, out = full[:, offset:], []
        for i in range(1, self.liquid_degree):
            product = product * full[:, offset - i:full.shape[1] - i]  # u_t ... u_{t-i}
            out.append(ACTIVATIONS[self.correlation_activation](product))
        return out

    def _extra_terms(self, x, state):
        if self.liquid_kernel != "pb":
            return None
        weights = self._liquid_weights().to(x.dtype)
        return sum(w * corr for w, corr in zip(weights, self._correlations(x, state)))

    def _ssm_input(self, x, state):
        if self.liquid_kernel != "kb":
            return x
        total = self._input_sum()[1][:, 0].to(x.dtype)  # (H,)
        return x + sum(total ** (p - 1) * corr for p, corr in enumerate(self._correlations(x, state), start=2))

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

    def _init_state(self, batch_size, *, device, dtype) -> State:
        state = super()._init_state(batch_size, device=device, dtype=dtype)
        state["inputs"] = torch.zeros(batch_size, self.d_model, self.liquid_degree - 1, device=device,
                                      dtype=dtype or self.D.dtype)
        return state
