"""Hydra: the bidirectional quasiseparable mixer (Hwang, Lahoti, Puduppully, Dao and Gu, arXiv 2407.09941).

Hydra's sequence mixing matrix is quasiseparable: a strictly lower-triangular semiseparable part,
a strictly upper-triangular one and a free diagonal. It is computed as two SSD passes (Mamba-2's
scan, arXiv 2405.21060), one over the sequence and one over the reversed sequence, each shifted by
one position so that it reads only the positions strictly before (after) the current one, plus a
diagonal term ``x * (fc_D(x) + D)``::

    y = shift(SSD(x)) + flip(shift(SSD(flip(x)))) + x * (fc_D(x) + D)      per head
    out = out_proj(RMSNorm(y) * silu(z))

The two passes have their own B, C and dt, and share x, A and the bias of dt. The short
convolution over x, B and C is centred (it reads ``d_conv // 2`` positions on each side), so the
whole layer sees the sequence both ways: it is not causal and has no recurrent step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import ShortConvolution
from ssmlab.layers.norm import RMSNorm
from ssmlab.mixers.base import LengthsInForward, Mixer, padding_mask, ssm_dtype, ssm_parameter
from ssmlab.ops import ssd
from ssmlab.ops.discretize import init_dt_bias
from ssmlab.registry import register


def _reverse(v: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``v`` (B, L, ...) read backwards along L: all of it (``order`` None), or, for a right-padded batch,
    each row's real positions only, by the permutation ``order`` (B, L), which is its own inverse."""
    if order is None:
        return v.flip(1)
    index = order.view(*order.shape, *(1,) * (v.dim() - 2)).expand_as(v)
    return v.gather(1, index)


def _shift(y: torch.Tensor) -> torch.Tensor:
    """y (B, L, ...) one position later along L, zero at the first: position t gets y[t - 1]."""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)


@register("mixer", "hydra", description="Hydra: bidirectional quasiseparable mixer (two shifted SSD passes + diagonal)",
          paper="2407.09941")
class Hydra(LengthsInForward, Mixer):
    """The Hydra layer (arXiv 2407.09941), as goombalab/hydra's ``hydra/modules/hydra.py``.

    Args (defaults as in the official layer):
        d_model: width D.
        d_state: state size N per head (64).
        d_conv: width of the centred depthwise convolution over x, B, C (7); must be odd.
        conv_init: if set, the convolution weights are uniform in [-conv_init, conv_init]
            (None: ``nn.Conv1d``'s default initialisation).
        expand: inner width E*D (2).
        headdim: head size P (64); the number of heads is ``E*D / P``.
        ngroups: groups G of B and C shared by ``H / G`` heads each, per direction (1).
        chunk_size: chunk length of the SSD algorithm (256).
        dt_min, dt_max, dt_init_floor: initial step log-uniform in [0.001, 0.1], floor 1e-4.
        norm_eps: epsilon of the output RMSNorm (1e-5).
        conv_bias (True), bias (False); lr: learning rate for A_log, dt_bias and D (no weight decay).
        backend: the ``ssd`` backend (None: the default).

    Parameters, with the official names: ``in_proj`` (D -> [z, x, B_fw, C_fw, B_bw, C_bw, dt_fw,
    dt_bw], widths E*D, E*D, 4 x G*N, 2 x H), ``conv1d`` (over x and the four B, C streams),
    ``dt_bias``, ``A_log`` (H,) shared by both directions (initialised to 0: A = -1, as the
    official code does), ``D`` (H,) and ``fc_D`` (E*D -> H, no bias) for the diagonal,
    ``norm`` (RMSNorm before the gate, ``norm_before_gate=True``), ``out_proj``.

    A right-padded batch (``lengths``) gives each row the output it has alone: padding is zeros
    to the centred convolution, and the backward pass reads each row from its last real position.
    (The official BERT runs the layer over zero-padded rows, whose padding reaches the real outputs.)

    Not carried over from the official layer: ``learnable_init_states``, ``dt_limit``, ``seq_idx``
    (packed sequences; ``lengths`` serves padded batches) and its fused memory-efficient path,
    which computes the same function.
    """

    causal = False

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 7, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256, *, conv_init: float | None = None, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, norm_eps: float = 1e-5, conv_bias: bool = True,
                 bias: bool = False, lr: float | None = None, backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"hydra: expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"hydra: the number of heads {self.nheads} must be divisible by ngroups={ngroups}")
        if not isinstance(d_conv, int) or d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"hydra: d_conv must be a positive odd int (the convolution is centred), got {d_conv!r}")
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.chunk_size, self.backend = chunk_size, backend
        self.conv_dim = self.d_inner + 4 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + 2 * self.nheads, bias=bias, **self.factory)
        self.conv1d = ShortConvolution(self.conv_dim, d_conv, bias=conv_bias, **self.factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.dt_bias = ssm_parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, device=device,
                                                  dtype=ssm_dtype(dtype)), dtype, lr=lr)
        self.A_log = ssm_parameter(torch.zeros(self.nheads, device=device), self.factory["dtype"], lr=lr)
        self.D = ssm_parameter(torch.ones(self.nheads, device=device), self.factory["dtype"], lr=lr)
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **self.factory)
        self.norm = RMSNorm(self.d_inner, norm_eps, **self.factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **self.factory)

    def _conv(self, xbc: torch.Tensor) -> torch.Tensor:
        """The centred convolution (``nn.Conv1d`` with ``padding=d_conv // 2``) over xbc (B, L, C): the causal
        convolution over the sequence followed by ``d_conv // 2`` zeros, read ``d_conv // 2`` positions later."""
        half = self.d_conv // 2
        return self.conv1d(F.pad(xbc, (0, 0, 0, half)))[:, half:]

    def _forward(self, x, state, return_state, lengths=None):
        batch, length, _ = x.shape
        gn = self.ngroups * self.d_state
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, 2 * self.nheads], dim=-1)
        order = None
        if lengths is not None:
            # Padding is zeros to the centred convolution, as past the end of a row alone.
            xbc = xbc * padding_mask(lengths, length)[..., None].to(xbc.dtype)
            t = torch.arange(length, device=x.device)
            order = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, L)
        xs, b_f, c_f, b_b, c_b = torch.split(F.silu(self._conv(xbc)), [self.d_inner, gn, gn, gn, gn], dim=-1)
        dt = F.softplus(rearrange(dt, "b l (two h) -> b l two h", two=2) + self.dt_bias)  # (B, L, 2, H)
        xh = rearrange(xs, "b l (h p) -> b l h p", p=self.headdim)  # (B, L, H, P)
        groups = lambda u: rearrange(u, "b l (g n) -> b l g n", g=self.ngroups)  # noqa: E731
        y = ssd(torch.cat([xh, _reverse(xh, order)]),  # (2B, L, H, P): forward rows, then reversed rows
                torch.cat([dt[:, :, 0], _reverse(dt[:, :, 1], order)]),
                -torch.exp(self.A_log),
                groups(torch.cat([b_f, _reverse(b_b, order)])),
                groups(torch.cat([c_f, _reverse(c_b, order)])),
                chunk_size=self.chunk_size, backend=self.backend)
        y = _shift(y)
        diagonal = xh * (self.fc_D(xs) + self.D)[..., None]  # (B, L, H, P)
        y = rearrange(y[:batch] + _reverse(y[batch:], order) + diagonal, "b l h p -> b l (h p)")
        y = self.norm(y) * F.silu(z.to(y.dtype))
        return self.out_proj(y.to(x.dtype)), None

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, heads={self.nheads}, "
                f"headdim={self.headdim}, ngroups={self.ngroups}")
