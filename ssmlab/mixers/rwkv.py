"""RWKV-4 (Peng et al., "RWKV: Reinventing RNNs for the Transformer Era", arXiv 2305.13048).

Time mixing: receptance, key and value are projections of a token-shifted input
(each channel interpolates between ``x_t`` and ``x_{t-1}`` with a learned
``mu``), and the WKV operator is an attention-like weighted average of past
values with a per-channel exponential time decay ``w > 0`` and a bonus ``u`` for
the current token::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})
    out_t = W_o (sigmoid(r_t) * wkv_t)

The WKV operator is the op :func:`ssmlab.ops.wkv` (numerically stable, with
the state ``(a, b, p)``: numerator ``a e^p``, denominator ``b e^p`` and ``p``
the largest exponent so far); ``step`` uses :func:`ssmlab.ops.wkv_step`.

Channel mixing (optional, ``channel_mix=True``): a token-shifted squared-ReLU
feed-forward gated by ``sigmoid(r)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.mixers.base import Mixer, State, set_optim, ssm_parameter
from ssmlab.ops import wkv, wkv_step
from ssmlab.ops.wkv import EMPTY_EXPONENT
from ssmlab.registry import register


@register("mixer", "rwkv", description="RWKV-4 time mixing (WKV with time decay and bonus), optional channel mixing",
          paper="2305.13048")
class RWKV(Mixer):
    """RWKV-4 time mixing and, optionally, channel mixing (arXiv 2305.13048).

    Time mixing, on the input ``x`` (B, L, D) and its token shift ``xx`` (``x`` one position back)::

        r, k, v = W_r lerp(xx, x, mu_r), W_k lerp(xx, x, mu_k), W_v lerp(xx, x, mu_v)
        a = W_o (sigmoid(r) * wkv(k, v))                     (see :func:`ssmlab.ops.wkv`)

    With ``channel_mix=True`` the mixer continues with the RWKV block's channel mixing on
    ``h = LayerNorm(x + a)`` and its token shift ``hh``::

        y = a + sigmoid(W'_r lerp(hh, h, mu'_r)) * W'_v relu(W'_k lerp(hh, h, mu'_k))^2

    The residual ``x + a`` is taken on the mixer's input (the backbone's normalised stream),
    not on the block's residual stream as in the original model; use it with the backbone's
    ``mlp=False``. By default (``channel_mix=False``) the mixer is time mixing only, ``y = a``,
    and the backbone's MLP plays the part of channel mixing.

    Args:
        d_model: width D.
        layer_id: index of this layer in the stack, 0-based (default 0).
        n_layers: number of layers (default 1). ``layer_id / (n_layers - 1)`` and
            ``1 - layer_id / n_layers`` set the initialisation, as in the RWKV-4 code:
            ``time_decay_d = -5 + 8 (d / (D - 1))^(0.7 + 1.3 r0)``, ``time_first_d = log 0.3 +
            0.5 ((d + 1) mod 3 - 1)``, ``mu_k = (d / D)^r1``, ``mu_v = mu_k + 0.3 r0``,
            ``mu_r = (d / D)^(r1 / 2)`` (r0 = layer_id / (n_layers - 1), r1 = 1 - layer_id / n_layers).
        channel_mix: add channel mixing inside the mixer (default False).
        ffn_mult: hidden width of channel mixing as a multiple of D (default 4).
        lr: learning rate of ``time_decay`` and ``time_first`` (default None: the trainer's).

    The decay per step is ``w = exp(time_decay)``, the bonus ``u = time_first``. The mixing
    coefficients and ``time_*`` parameters get no weight decay. The projections keep PyTorch's
    default init (the RWKV code zero-initialises some of them, which would make a fresh mixer
    the zero map).

    State: ``{"x_prev": (B, D), "a": (B, D), "b": (B, D), "p": (B, D)}`` plus
    ``"ffn_x_prev": (B, D)`` with ``channel_mix``: the previous inputs of the token shifts and
    the scaled WKV sums (numerator ``a e^p``, denominator ``b e^p``; a, b, p in float32 or wider).
    """

    causal = True

    def __init__(self, d_model: int, *, layer_id: int = 0, n_layers: int = 1, channel_mix: bool = False,
                 ffn_mult: int = 4, lr: float | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if not (isinstance(n_layers, int) and isinstance(layer_id, int) and 0 <= layer_id < n_layers):
            raise ValueError(f"rwkv: need 0 <= layer_id < n_layers, got layer_id={layer_id}, n_layers={n_layers}")
        if not isinstance(ffn_mult, int) or ffn_mult < 1:
            raise ValueError(f"rwkv: ffn_mult must be a positive int, got {ffn_mult!r}")
        self.layer_id, self.n_layers, self.channel_mix = layer_id, n_layers, channel_mix
        dtype = self.factory["dtype"]
        ratio_0_to_1 = layer_id / max(n_layers - 1, 1)
        ratio_1_to_almost_0 = 1.0 - layer_id / n_layers
        channel = torch.arange(d_model, dtype=torch.float64, device=device)
        fraction = channel / d_model
        decay_speed = -5 + 8 * (channel / max(d_model - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        zigzag = ((channel + 1) % 3 - 1) * 0.5
        self.time_decay = ssm_parameter(decay_speed, dtype, lr=lr)
        self.time_first = ssm_parameter(math.log(0.3) + zigzag, dtype, lr=lr)
        mix_k = fraction ** ratio_1_to_almost_0
        self.time_mix_k = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
        self.time_mix_v = set_optim(nn.Parameter((mix_k + 0.3 * ratio_0_to_1).to(dtype)), weight_decay=0.0)
        self.time_mix_r = set_optim(nn.Parameter((fraction ** (0.5 * ratio_1_to_almost_0)).to(dtype)),
                                    weight_decay=0.0)
        self.key = nn.Linear(d_model, d_model, bias=False, **self.factory)
        self.value = nn.Linear(d_model, d_model, bias=False, **self.factory)
        self.receptance = nn.Linear(d_model, d_model, bias=False, **self.factory)
        self.output = nn.Linear(d_model, d_model, bias=False, **self.factory)
        if channel_mix:
            hidden = ffn_mult * d_model
            self.ffn_norm = nn.LayerNorm(d_model, **self.factory)
            self.ffn_mix_k = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
            self.ffn_mix_r = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
            self.ffn_key = nn.Linear(d_model, hidden, bias=False, **self.factory)
            self.ffn_receptance = nn.Linear(d_model, d_model, bias=False, **self.factory)
            self.ffn_value = nn.Linear(hidden, d_model, bias=False, **self.factory)

    @staticmethod
    def _shift(x, x_prev):
        """``x`` one position back (B, L, D), with ``x_prev`` (B, D) first."""
        return torch.cat([x_prev[:, None], x[:, :-1]], dim=1)

    def _time_mix_inputs(self, x, xx):
        """Receptance (B, L, D) and key, value in float32 or wider."""
        compute = torch.promote_types(x.dtype, torch.float32)
        k = self.key(torch.lerp(xx, x, self.time_mix_k)).to(compute)
        v = self.value(torch.lerp(xx, x, self.time_mix_v)).to(compute)
        r = self.receptance(torch.lerp(xx, x, self.time_mix_r))
        return r, k, v

    def _decay_and_bonus(self, like):
        return torch.exp(self.time_decay.to(like.dtype)), self.time_first.to(like.dtype)

    def _channel_mix(self, h, hh):
        k = torch.relu(self.ffn_key(torch.lerp(hh, h, self.ffn_mix_k))).square()
        return torch.sigmoid(self.ffn_receptance(torch.lerp(hh, h, self.ffn_mix_r))) * self.ffn_value(k)

    def _forward(self, x, state, return_state):
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        r, k, v = self._time_mix_inputs(x, self._shift(x, state["x_prev"]))
        w, u = self._decay_and_bonus(k)
        out, (a, b, p) = wkv(k, v, w, u, initial_state=(state["a"], state["b"], state["p"]),
                            return_final_state=True)
        y = self.output(torch.sigmoid(r) * out.to(x.dtype))
        new_state = {"x_prev": x[:, -1], "a": a, "b": b, "p": p}
        if self.channel_mix:
            h = self.ffn_norm(x + y)
            y = y + self._channel_mix(h, self._shift(h, state["ffn_x_prev"]))
            new_state["ffn_x_prev"] = h[:, -1]
        return y, (new_state if return_state else None)

    def _step(self, x_t, state):
        r, k, v = self._time_mix_inputs(x_t, state["x_prev"])
        w, u = self._decay_and_bonus(k)
        out, (a, b, p) = wkv_step(k, v, w, u, (state["a"], state["b"], state["p"]))
        y = self.output(torch.sigmoid(r) * out.to(x_t.dtype))
        new_state = {"x_prev": x_t, "a": a, "b": b, "p": p}
        if self.channel_mix:
            h = self.ffn_norm(x_t + y)
            y = y + self._channel_mix(h, state["ffn_x_prev"])
            new_state["ffn_x_prev"] = h
        return y, new_state

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.key.weight.dtype
        wide = torch.promote_types(dtype, torch.float32)
        shape = (batch_size, self.d_model)
        state = {"x_prev": torch.zeros(shape, device=device, dtype=dtype),
                 "a": torch.zeros(shape, device=device, dtype=wide),
                 "b": torch.zeros(shape, device=device, dtype=wide),
                 "p": torch.full(shape, EMPTY_EXPONENT, device=device, dtype=wide)}
        if self.channel_mix:
            state["ffn_x_prev"] = torch.zeros(shape, device=device, dtype=dtype)
        return state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, layer_id={self.layer_id}, n_layers={self.n_layers}, "
                f"channel_mix={self.channel_mix}")
