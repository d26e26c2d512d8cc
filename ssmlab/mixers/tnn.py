"""TNN: the Toeplitz neural network's gated Toeplitz unit (Qin et al., arXiv 2305.04749).

Token mixing by a Toeplitz matrix, ``y_i = sum_j t_{i-j} v_j``, whose coefficients come
from a relative position encoder (an MLP of the offset ``i - j``) times an
exponential decay ``lambda^|i-j|``, applied with an FFT in O(L log L)::

    u, v = act(W_u x), act(W_v x)            (E = expand * D channels)
    y = W_o (u * toeplitz(v))

The causal version uses the offsets ``i - j >= 0`` only; with ``bidirectional=True``
the negative offsets are used as well and the layer is not causal. Its state
for streaming is the history of ``v`` (it grows with the context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmlab.mixers.base import Mixer, State, StepFromForward
from ssmlab.ops import fft_conv
from ssmlab.registry import register


class SimpleRMSNorm(nn.Module):
    """``x / (rms(x) + eps)`` over the last dimension, without parameters (the official Rpe's norm)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x / (x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + self.eps)


class RelativePositionEncoder(nn.Module):
    """MLP from a relative offset (a number) to one coefficient per channel.

    As the official Rpe (Doraemonzzz/tnn-pytorch, ``norm_type="simplermsnorm"``): ``Linear(1, hidden)``,
    then ``layers`` times ``SimpleRMSNorm, ReLU, Linear(hidden, hidden)``, then ``SimpleRMSNorm, ReLU,
    Linear(hidden, channels)``.
    """

    def __init__(self, channels: int, hidden: int, layers: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        blocks = [nn.Linear(1, hidden, **factory)]
        for _ in range(layers):  # `layers` hidden (hidden x hidden) layers, as the official Rpe
            blocks += [SimpleRMSNorm(), nn.ReLU(), nn.Linear(hidden, hidden, **factory)]
        blocks += [SimpleRMSNorm(), nn.ReLU(), nn.Linear(hidden, channels, **factory)]
        self.mlp = nn.Sequential(*blocks)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(offsets[:, None]).T  # (channels, len(offsets))


@register("mixer", "tnn", description="Toeplitz neural network: relative-position Toeplitz kernels by FFT",
          paper="2305.04749")
class TNN(StepFromForward, Mixer):
    """The gated Toeplitz unit (GTU) of TNN (arXiv 2305.04749).

    Args:
        d_model: width D.
        expand: width of the gated streams E = expand * D (1).
        rpe_dim: hidden width of the relative position encoder (max(16, D // 8)).
        rpe_layers: hidden layers of the encoder (3).
        decay: lambda, the exponential decay of the coefficients (0.99).
        bidirectional: use negative offsets too (default False; the layer is then not causal).

    State: ``{"history": (B, T, E)}``, every ``v`` so far.
    """

    causal = True
    _state_growing_dims = {"history": (1,)}

    def __init__(self, d_model: int, *, expand: int = 1, rpe_dim: int | None = None, rpe_layers: int = 3,
                 decay: float = 0.99, bidirectional: bool = False, device=None, dtype=None):
        super().__init__(d_model, bidirectional=bidirectional, device=device, dtype=dtype)
        if not 0 < decay <= 1 or expand < 1 or rpe_layers < 1:
            raise ValueError(f"tnn: need 0 < decay <= 1, expand >= 1, rpe_layers >= 1; got {decay}, {expand}, "
                             f"{rpe_layers}")
        self.width, self.decay = expand * d_model, decay
        self.uv_proj = nn.Linear(d_model, 2 * self.width, **self.factory)
        self.rpe = RelativePositionEncoder(self.width, rpe_dim or max(16, d_model // 8), rpe_layers, **self.factory)
        self.out_proj = nn.Linear(self.width, d_model, **self.factory)

    def kernel(self, length: int, *, device=None, dtype=None) -> torch.Tensor:
        """Causal Toeplitz coefficients t_0 .. t_{L-1} (E, L), or (E, 2L) with t_{-1} .. t_{-L} appended."""
        offsets = torch.arange(length, device=device, dtype=dtype)
        k = self.rpe(offsets) * self.decay ** offsets
        if self.bidirectional:
            back = offsets + 1
            k = torch.cat([k, self.rpe(-back) * self.decay ** back], dim=-1)
        return k

    def _forward(self, x, state, return_state):
        u, v = F.silu(self.uv_proj(x)).chunk(2, dim=-1)
        past = None if state is None else state["history"]
        full = v if past is None else torch.cat([past, v], dim=1)
        k = self.kernel(full.shape[1], device=x.device, dtype=x.dtype)
        mixed = fft_conv(full, k, bidirectional=self.bidirectional)[:, full.shape[1] - v.shape[1]:]
        return self.out_proj(u * mixed), ({"history": full} if return_state else None)

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        return {"history": torch.zeros(batch_size, 0, self.width, device=device, dtype=dtype)}
