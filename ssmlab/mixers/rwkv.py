"""RWKV-4 (Peng et al., "RWKV: Reinventing RNNs for the Transformer Era", arXiv 2305.13048).

Time mixing: receptance, key and value are projections of a token-shifted input
(each channel interpolates between ``x_t`` and ``x_{t-1}`` with a learned
``mu``), and the WKV operator is an attention-like weighted average of past
values with a per-channel exponential time decay ``w > 0`` and a bonus ``u`` for
the current token::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})
    out_t = W_o (sigmoid(r_t) * wkv_t)

The sums overflow for large keys, so they are kept as ``(a, b, p)`` with
numerator ``a e^p``, denominator ``b e^p`` and ``p`` the largest exponent so
far (the running-max trick of the official CUDA kernel). ``forward`` evaluates
them in ``O(sqrt L)`` sequential steps: a recurrence inside chunks of about
``sqrt L`` positions, run for all chunks at once, then one across chunks; ``step``
is the plain recurrence.

Channel mixing (optional, ``channel_mix=True``): a token-shifted squared-ReLU
feed-forward gated by ``sigmoid(r)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmlab.mixers.base import Mixer, State, set_optim
from ssmlab.registry import register

# The "minus infinity" of the empty WKV state, as in the official code; finite so that
# differences of exponents never produce NaN.
_EMPTY_EXPONENT = -1e30


def _combine(a1, b1, p1, a2, b2, p2):
    """Sum of two scaled WKV sums ``(a1 e^p1 + a2 e^p2, b1 e^p1 + b2 e^p2)`` rescaled by their
    larger exponent. The exponent is detached: the represented sums do not depend on it, so
    gradients through ``a`` and ``b`` alone are exact."""
    p = torch.maximum(p1, p2).detach()
    e1, e2 = torch.exp(p1 - p), torch.exp(p2 - p)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p


def _wkv_output(a, b, p, k, v, u):
    """``wkv`` from the state of the positions before (a, b, p), the current key, value and bonus."""
    bonus = u + k
    q = torch.maximum(p, bonus).detach()
    e1, e2 = torch.exp(p - q), torch.exp(bonus - q)
    return (e1 * a + e2 * v) / (e1 * b + e2)


def wkv(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """The RWKV-4 WKV operator (arXiv 2305.13048, eq. 14), numerically stable.

    Args:
        k, v: keys and values (B, L, D).
        w: per-channel decay per step, positive (D,) (``exp(time_decay)``).
        u: per-channel bonus of the current token (D,) (``time_first``).
        state: ``(a, b, p)``, each (B, D), summarising the positions before; empty by default.

    Returns ``wkv`` (B, L, D) and the state ``(a, b, p)`` after the last position.
    """
    batch, length, dim = k.shape
    if state is None:
        zeros = k.new_zeros(batch, dim)
        state = (zeros, zeros, torch.full_like(zeros, _EMPTY_EXPONENT))
    a0, b0, p0 = state
    size = math.isqrt(length - 1) + 1  # ceil(sqrt(L)): about as many chunks as positions per chunk
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    kc = F.pad(k, (0, 0, 0, pad)).unflatten(1, (n_chunks, size))  # (B, n, C, D)
    vc = F.pad(v, (0, 0, 0, pad)).unflatten(1, (n_chunks, size))
    ones = torch.ones_like(kc[:, :, 0])
    # Inclusive sums inside each chunk, all chunks at once: C sequential steps.
    local = [(vc[:, :, 0], ones, kc[:, :, 0])]
    for j in range(1, size):
        a, b, p = local[-1]
        local.append(_combine(a, b, p - w, vc[:, :, j], ones, kc[:, :, j]))
    la, lb, lp = (torch.stack(parts, dim=2) for parts in zip(*local))  # (B, n, C, D)
    # The state entering each chunk: n sequential steps.
    entries = [(a0, b0, p0)]
    for c in range(n_chunks - 1):
        a, b, p = entries[-1]
        entries.append(_combine(a, b, p - size * w, la[:, c, -1], lb[:, c, -1], lp[:, c, -1]))
    ea, eb, ep = (torch.stack(parts, dim=1)[:, :, None] for parts in zip(*entries))  # (B, n, 1, D)
    # Inclusive sums up to every position: the entry state decayed by j + 1 steps, plus the chunk's.
    steps = torch.arange(1, size + 1, device=k.device, dtype=k.dtype)[:, None]  # (C, 1)
    ga, gb, gp = (t.flatten(1, 2)[:, :length] for t in _combine(ea, eb, ep - steps * w, la, lb, lp))  # (B, L, D)
    # The state before each position.
    before = [torch.cat([s[:, None], g[:, :-1]], dim=1) for s, g in zip(state, (ga, gb, gp))]
    out = _wkv_output(*before, k, v, u)
    return out, (ga[:, -1], gb[:, -1], gp[:, -1])


def wkv_step(k_t: torch.Tensor, v_t: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """One position of :func:`wkv`: ``k_t``, ``v_t`` (B, D), state ``(a, b, p)`` -> ``wkv_t`` (B, D), new state."""
    a, b, p = state
    out = _wkv_output(a, b, p, k_t, v_t, u)
    return out, _combine(a, b, p - w, v_t, torch.ones_like(v_t), k_t)


@register("mixer", "rwkv", description="RWKV-4 time mixing (WKV with time decay and bonus), optional channel mixing",
          paper="2305.13048")
class RWKV(Mixer):
    """RWKV-4 time mixing and, optionally, channel mixing (arXiv 2305.13048).

    Time mixing, on the input ``x`` (B, L, D) and its token shift ``xx`` (``x`` one position back)::

        r, k, v = W_r lerp(xx, x, mu_r), W_k lerp(xx, x, mu_k), W_v lerp(xx, x, mu_v)
        a = W_o (sigmoid(r) * wkv(k, v))                     (see :func:`wkv`)

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
        super().__init__(d_model)
        if not (isinstance(n_layers, int) and isinstance(layer_id, int) and 0 <= layer_id < n_layers):
            raise ValueError(f"rwkv: need 0 <= layer_id < n_layers, got layer_id={layer_id}, n_layers={n_layers}")
        if not isinstance(ffn_mult, int) or ffn_mult < 1:
            raise ValueError(f"rwkv: ffn_mult must be a positive int, got {ffn_mult!r}")
        self.layer_id, self.n_layers, self.channel_mix = layer_id, n_layers, channel_mix
        factory = {"device": device, "dtype": dtype}
        dtype = dtype or torch.get_default_dtype()
        ratio_0_to_1 = layer_id / max(n_layers - 1, 1)
        ratio_1_to_almost_0 = 1.0 - layer_id / n_layers
        channel = torch.arange(d_model, dtype=torch.float64, device=device)
        fraction = channel / d_model
        decay_speed = -5 + 8 * (channel / max(d_model - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        zigzag = ((channel + 1) % 3 - 1) * 0.5
        self.time_decay = set_optim(nn.Parameter(decay_speed.to(dtype)), weight_decay=0.0, lr=lr)
        self.time_first = set_optim(nn.Parameter((math.log(0.3) + zigzag).to(dtype)), weight_decay=0.0, lr=lr)
        mix_k = fraction ** ratio_1_to_almost_0
        self.time_mix_k = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
        self.time_mix_v = set_optim(nn.Parameter((mix_k + 0.3 * ratio_0_to_1).to(dtype)), weight_decay=0.0)
        self.time_mix_r = set_optim(nn.Parameter((fraction ** (0.5 * ratio_1_to_almost_0)).to(dtype)),
                                    weight_decay=0.0)
        self.key = nn.Linear(d_model, d_model, bias=False, **factory)
        self.value = nn.Linear(d_model, d_model, bias=False, **factory)
        self.receptance = nn.Linear(d_model, d_model, bias=False, **factory)
        self.output = nn.Linear(d_model, d_model, bias=False, **factory)
        if channel_mix:
            hidden = ffn_mult * d_model
            self.ffn_norm = nn.LayerNorm(d_model, **factory)
            self.ffn_mix_k = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
            self.ffn_mix_r = set_optim(nn.Parameter(mix_k.to(dtype)), weight_decay=0.0)
            self.ffn_key = nn.Linear(d_model, hidden, bias=False, **factory)
            self.ffn_receptance = nn.Linear(d_model, d_model, bias=False, **factory)
            self.ffn_value = nn.Linear(hidden, d_model, bias=False, **factory)

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
        out, (a, b, p) = wkv(k, v, w, u, (state["a"], state["b"], state["p"]))
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

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        device = device if device is not None else self.time_decay.device
        dtype = dtype or self.time_decay.dtype
        wide = torch.promote_types(dtype, torch.float32)
        shape = (batch_size, self.d_model)
        state = {"x_prev": torch.zeros(shape, device=device, dtype=dtype),
                 "a": torch.zeros(shape, device=device, dtype=wide),
                 "b": torch.zeros(shape, device=device, dtype=wide),
                 "p": torch.full(shape, _EMPTY_EXPONENT, device=device, dtype=wide)}
        if self.channel_mix:
            state["ffn_x_prev"] = torch.zeros(shape, device=device, dtype=dtype)
        return state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, layer_id={self.layer_id}, n_layers={self.n_layers}, "
                f"channel_mix={self.channel_mix}")
