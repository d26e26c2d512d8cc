"""Hyena: long convolutions with implicit filters and data-controlled gating (Poli et al., arXiv 2302.10866).

The operator of order N projects the input to N + 1 streams (each passed through
a short causal convolution), ``x_1 .. x_N`` and ``v``, then alternates gating and
long causal convolutions::

    z = v
    for i = N, N-1, ..., 2:   z = h_{i-1} * (x_i . z) + b_{i-1} . (x_i . z)
    y = W_o (x_1 . z)

Each long filter ``h`` is implicit: a small FFN with sine activations reads a
learnt positional encoding, initialised to the time ``t = k / (l_max - 1)`` and ``emb_dim // 2``
cosine/sine bands, and an exponential window ``exp(-alpha t)`` with per-channel rates
spreads the filters from slow to fast decay; time grid, bands and rates are those of the
official code (HazyResearch/safari ``standalone_hyena.py``, whose filter channels are laid out
(gate step, channel) as here; ``src/models/sequence/hyena.py`` interleaves them as (channel,
gate step), which only permutes the parameters and the rates). The filter of a length-L input is the
first L values of the filter over ``l_max`` positions, so the layer is causal and
streams: its state is the input history of each long convolution (it grows with
the context, like a KV cache) plus the short convolutions' last inputs.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import ShortConvolution
from ssmlab.mixers.base import (Mixer, State, StepFromForward, at_least_float32, set_optim, ssm_buffer, ssm_dtype,
                                ssm_parameter)
from ssmlab.ops import fft_conv
from ssmlab.registry import register


class Sin(nn.Module):
    """``sin(w x)`` with a learnable frequency per feature (Hyena's filter activation)."""

    def __init__(self, features: int, w: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.freq = nn.Parameter(torch.full((features,), w, device=device, dtype=dtype))

    def forward(self, x):
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Filters (channels, L) from an FFN of a learnt positional encoding, times an exponential window.

    As in the official code: the encoding ``z`` (l_max, emb_dim) is initialised to ``t`` and
    sine/cosine bands and then learnt (with its own small learning rate); the FFN is
    ``Linear(emb_dim, F)``, then ``inner_layers`` times ``Linear(F, F)``, each followed by one
    shared ``Sin`` activation, then ``Linear(F, channels)`` without bias.
    """

    def __init__(self, channels: int, l_max: int, emb_dim: int, filter_order: int, fast_decay: float,
                 slow_decay: float, target: float, inner_layers: int = 2, pos_emb_lr: float | None = 1e-5,
                 filter_lr: float | None = None, filter_wd: float = 0.0, device=None, dtype=None):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"hyena: emb_dim must be odd and >= 3 (t plus sine/cosine pairs), got {emb_dim}")
        if inner_layers < 0:
            raise ValueError(f"hyena: inner_layers must be >= 0, got {inner_layers}")
        factory = {"device": device, "dtype": dtype}
        self.l_max, self.channels = l_max, channels
        act = Sin(filter_order, **factory)  # one module, so one learnt frequency vector, as the official filter
        layers = [nn.Linear(emb_dim, filter_order, **factory), act]
        for _ in range(inner_layers):
            layers += [nn.Linear(filter_order, filter_order, **factory), act]
        layers.append(nn.Linear(filter_order, channels, bias=False, **factory))
        self.ffn = nn.Sequential(*layers)
        for param in self.ffn.parameters():
            set_optim(param, weight_decay=filter_wd, lr=filter_lr)
        # As the official code: t runs from 0 to 1 over the l_max positions, the bands are
        # exp(-i f 2 pi k / l_max) as (cos, -sin).
        k = torch.arange(l_max, device=device, dtype=torch.float64)[:, None]
        t = k / max(l_max - 1, 1)
        bands = (emb_dim - 1) // 2
        angle = 2 * math.pi * k / l_max * torch.linspace(1e-4, bands - 1, bands, device=device, dtype=torch.float64)
        z = torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1)  # (l_max, emb_dim)
        self.z = set_optim(nn.Parameter(z.to(dtype or torch.get_default_dtype())), weight_decay=0.0, lr=pos_emb_lr)
        # Decay rates from slow (reaching `target` after slow_decay * l_max) to fast, as the official code.
        rates = torch.linspace(math.log(1 / target) / slow_decay, math.log(1 / target) / fast_decay, channels,
                               device=device, dtype=ssm_dtype(dtype))
        self.register_buffer("decay_rates", ssm_buffer(rates, dtype), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        if length > self.l_max:
            raise ValueError(f"hyena: sequence length {length} exceeds l_max={self.l_max}")
        t = torch.arange(length, device=self.decay_rates.device, dtype=self.decay_rates.dtype)[:, None] / max(
            self.l_max - 1, 1)
        h = self.ffn(self.z[:length]) * torch.exp(-t * self.decay_rates)  # (L, channels)
        return h.T


@register("mixer", "hyena", description="Hyena operator: implicit long filters, data-controlled gating",
          paper="2302.10866")
class Hyena(StepFromForward, Mixer):
    """The Hyena operator (arXiv 2302.10866).

    Args:
        d_model: width D.
        l_max: longest sequence (2048); the filters are defined on ``t = k / (l_max - 1)``, k = 0 .. l_max - 1.
        order: N, the number of gates (2).
        filter_order: width of the filter FFN (64).
        emb_dim: size of the positional encoding, t and sine/cosine bands (33).
        short_filter: width of the short causal convolutions (3).
        fast_decay, slow_decay, target: the windows decay to ``target`` (0.01) after
            ``fast_decay`` (0.3) to ``slow_decay`` (1.5) times l_max.
        dropout: dropout on the gated streams (0.0).
        inner_layers: hidden ``Linear(F, F)`` layers of the filter FFN (2, the official default).
        pos_emb_lr: learning rate of the positional encoding (1e-5, as the official code; no weight decay).
        filter_lr, filter_wd: learning rate (``None``: the trainer's) and weight decay (0.0) of the
            filter FFN, as the official code's filter optimiser settings.

    State: ``{"short": (B, (N+1) D, short_filter - 1), "history": (B, N - 1, T, D)}``: the short
    convolutions' last inputs and the inputs of every long convolution so far.
    """

    causal = True
    _state_growing_dims = {"history": (2,)}

    def __init__(self, d_model: int, l_max: int = 2048, *, order: int = 2, filter_order: int = 64, emb_dim: int = 33,
                 short_filter: int = 3, fast_decay: float = 0.3, slow_decay: float = 1.5, target: float = 1e-2,
                 dropout: float = 0.0, inner_layers: int = 2, pos_emb_lr: float | None = 1e-5,
                 filter_lr: float | None = None, filter_wd: float = 0.0, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if order < 2 or l_max < 1 or short_filter < 1:
            raise ValueError(f"hyena: need order >= 2, l_max >= 1, short_filter >= 1; got {order}, {l_max}, "
                             f"{short_filter}")
        self.order, self.l_max, self.short_width = order, l_max, short_filter
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width, **self.factory)
        self.short = ShortConvolution(width, short_filter, **self.factory)
        self.filter = ImplicitFilter((order - 1) * d_model, l_max, emb_dim, filter_order, fast_decay, slow_decay,
                                     target, inner_layers, pos_emb_lr, filter_lr, filter_wd, **self.factory)
        self.bias = ssm_parameter(torch.randn(order - 1, d_model, device=device, dtype=ssm_dtype(dtype)), dtype,
                                  weight_decay=None)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model, **self.factory)

    def _streams(self, x, short_state):
        u, short_state = self.short(self.in_proj(x), short_state, return_state=True)
        *gates, v = u.split(self.d_model, dim=-1)
        return gates, v, short_state

    def _forward(self, x, state, return_state):
        gates, z, short_state = self._streams(x, None if state is None else state["short"])
        past = None if state is None else state["history"]  # (B, N-1, T, D)
        offset = 0 if past is None else past.shape[2]
        filters = rearrange(self.filter(offset + x.shape[1]), "(n d) l -> n d l", n=self.order - 1)
        inputs = []
        for i, gate in enumerate(reversed(gates[1:])):
            z = self.dropout(gate * z)
            full = z if past is None else torch.cat([past[:, i], z], dim=1)  # (B, T + L, D)
            inputs.append(full)
            u = at_least_float32(full)
            z = fft_conv(u, filters[i].to(u.dtype), D=self.bias[i].to(u.dtype)).to(full.dtype)[:, offset:]
        y = self.out_proj(gates[0] * z)
        if not return_state:
            return y, None
        return y, {"short": short_state, "history": torch.stack(inputs, dim=1)}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.in_proj.weight.dtype
        return {"short": self.short.init_state(batch_size, device=device, dtype=dtype),
                "history": torch.zeros(batch_size, self.order - 1, 0, self.d_model, device=device, dtype=dtype)}
