"""Mega: moving average equipped gated attention (Ma et al., arXiv 2209.10655).

A multi-dimensional damped exponential moving average (EMA) gives every position
a smoothed, position-aware summary; single-head gated attention then mixes the
sequence, its queries and keys both derived from the EMA output::

    EMA:  h_t = alpha * (beta x_t) + (1 - alpha * delta) * h_{t-1},  y_t = (eta / sqrt(h)) . h_t   (per channel, h dims)
    X' = silu(EMA(X) + omega * X)
    Z  = silu(W_z X'),  Q = kappa_q * Z + mu_q,  K = kappa_k * Z + mu_k,  V = silu(W_v X)
    O  = softmax(Q K^T / sqrt(z) + b_rel, causal) V
    gamma = silu(W_g X'),  phi = sigmoid(W_f X'),  H = silu(W_h X' + W_u (gamma * O))
    Y  = phi * H + (1 - phi) * X

The EMA is a real diagonal SSM (A_bar = 1 - alpha delta, B_bar = alpha beta, C = eta / sqrt(h)),
computed as a convolution by FFT; its recurrent form is the same system. As in the official
code (facebookresearch/mega ``MultiHeadEMA``), C is the learnt ``eta`` times the constant
``sqrt(1 / h)``; alpha and delta are named as in the paper, where the official code calls the
paper's alpha ``delta`` and its delta ``alpha``. With
``chunk_size`` attention only reaches back to the start of each chunk (Mega-chunk),
for linear cost. The state for streaming is the EMA state and the keys and values so far.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmlab.mixers.base import Mixer, State, StepFromForward, at_least_float32, ssm_parameter
from ssmlab.ops import fft_conv
from ssmlab.ops.kernels import diagonal_state_terms, ssm_kernel_diag_discrete
from ssmlab.registry import register


@register("mixer", "mega", description="Mega: damped multi-dimensional EMA plus single-head gated attention",
          paper="2209.10655")
class Mega(StepFromForward, Mixer):
    """The Mega layer (arXiv 2209.10655).

    Args:
        d_model: width d.
        ndim: h, the expansion of each channel in the EMA (16).
        z_dim: width of the shared query/key representation (min(128, d)).
        v_dim: width of the values (2 d).
        chunk_size: ``None`` for full causal attention (default), or the chunk length of Mega-chunk.
        max_positions: longest distance covered by the learnt relative position bias (2048).
        dropout: attention dropout (0.0).

    Initialisation as in the paper's code: alpha, delta (pre-sigmoid) ~ N(0, 0.2); beta ~
    N(0, 0.02) plus alternating +1/-1; eta, omega ~ N(0, 1); the projections' weights and the
    query/key scales ~ N(0, 0.02), their biases 0.

    The official layer also holds its norm and returns ``phi * H + (1 - phi) * residual`` with the
    un-normalised input as the residual; here the norm and the residual are the backbone's, and
    ``X`` above is the mixer's input.

    State: ``{"ema": (B, d, h), "k": (B, T, z), "v": (B, T, v), "valid": (B, T)}``; ``valid``
    marks the real cached positions (after a padded batch each row's cache is right-aligned,
    with padding entries in front).
    """

    causal = True
    _state_growing_dims = {"k": (1,), "v": (1,), "valid": (1,)}

    def __init__(self, d_model: int, ndim: int = 16, *, z_dim: int | None = None, v_dim: int | None = None,
                 chunk_size: int | None = None, max_positions: int = 2048, dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if ndim < 1 or max_positions < 1 or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"mega: ndim, max_positions and chunk_size must be positive, got {ndim}, "
                             f"{max_positions}, {chunk_size}")
        self.ndim, self.chunk_size, self.max_positions, self.dropout = ndim, chunk_size, max_positions, dropout
        self.z_dim, self.v_dim = z_dim or min(128, d_model), v_dim or 2 * d_model
        f64 = {"device": device, "dtype": torch.float64}
        dtype = self.factory["dtype"]
        self.alpha = ssm_parameter(torch.randn(d_model, ndim, **f64) * 0.2, dtype, weight_decay=None)
        self.delta = ssm_parameter(torch.randn(d_model, ndim, **f64) * 0.2, dtype, weight_decay=None)
        signs = torch.ones(ndim, **f64)
        signs[1::2] = -1.0
        self.beta = nn.Parameter((torch.randn(d_model, ndim, **f64) * 0.02 + signs).to(dtype))
        self.eta = nn.Parameter(torch.randn(d_model, ndim, **f64).to(dtype))
        self.omega = ssm_parameter(torch.randn(d_model, **f64), dtype, weight_decay=None)
        self.v_proj = nn.Linear(d_model, self.v_dim, **self.factory)
        # One projection of X' into Z, gamma, phi and the first term of H.
        self.mx_proj = nn.Linear(d_model, self.z_dim + self.v_dim + 2 * d_model, **self.factory)
        self.qk_scale = nn.Parameter(torch.randn(2, self.z_dim, **f64).mul(0.02).to(dtype))
        self.qk_bias = nn.Parameter(torch.zeros(2, self.z_dim, **self.factory))
        self.h_proj = nn.Linear(self.v_dim, d_model, **self.factory)
        for proj in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)
        self.rel_bias = nn.Parameter((torch.randn(max_positions, **f64) * 0.02).to(dtype))

    def _ema_system(self):
        """A_bar (d, h) as log, B_bar and C of the EMA's diagonal SSM."""
        alpha, delta = torch.sigmoid(self.alpha), torch.sigmoid(self.delta)
        return (torch.log1p(-alpha * delta), alpha * self.beta.to(alpha.dtype),
                self.eta.to(alpha.dtype) * math.sqrt(1.0 / self.ndim))

    def _ema(self, x, h0, return_state):
        log_q, b_bar, c = self._ema_system()
        u = at_least_float32(x)
        kernel = ssm_kernel_diag_discrete(log_q, b_bar, c, x.shape[1])  # (d, L)
        y = fft_conv(u, kernel.to(u.dtype), D=self.omega.to(u.dtype))
        extra, h = diagonal_state_terms(u, log_q, b_bar, c, h0, return_state, scale=1.0)
        return (y if extra is None else y + extra).to(x.dtype), h

    def _attend(self, q, k, v, valid):
        """Causal (or chunked) attention of the last L keys' queries over all keys; (B, L, *).

        ``valid`` (B, T + L) marks real keys; cached padding (in front) shifts a row's
        absolute positions, which the chunk boundaries of Mega-chunk depend on.
        """
        length, total = q.shape[1], k.shape[1]
        real = valid.sum(1)  # (B,) positions seen, the new ones included
        if int(real.max()) > self.max_positions:
            raise ValueError(f"mega: context of {int(real.max())} positions exceeds max_positions="
                             f"{self.max_positions}")
        i = torch.arange(total - length, total, device=q.device)[:, None]
        j = torch.arange(total, device=q.device)[None]
        allowed = (j <= i) & valid[:, None, :]  # (B, L, T + L)
        if self.chunk_size is not None:
            shift = (total - real)[:, None, None]  # absolute position = index - shift
            allowed = allowed & ((j - shift) // self.chunk_size == (i - shift) // self.chunk_size)
        bias = self.rel_bias[(i - j).clamp(0, self.max_positions - 1)]  # (L, T + L)
        bias = bias.masked_fill(~allowed, float("-inf"))[:, None]  # (B, 1, L, T + L)
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=bias.to(q.dtype),
                                              dropout_p=dropout, scale=1 / math.sqrt(self.z_dim))[:, 0]

    def _forward(self, x, state, return_state):
        ema, h = self._ema(x, None if state is None else state["ema"], return_state)
        mx = F.silu(ema)
        z, gamma, phi, hx = torch.split(self.mx_proj(mx), [self.z_dim, self.v_dim, self.d_model, self.d_model],
                                        dim=-1)
        z = F.silu(z)
        q, k = z * self.qk_scale[0] + self.qk_bias[0], z * self.qk_scale[1] + self.qk_bias[1]
        v = F.silu(self.v_proj(x))
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if state is not None:
            k, v = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
            valid = torch.cat([state["valid"], valid], dim=1)
        attn = self._attend(q, k, v, valid)
        out = F.silu(hx + self.h_proj(F.silu(gamma) * attn))
        phi = torch.sigmoid(phi)
        y = phi * out + (1 - phi) * x
        return y, ({"ema": h, "k": k, "v": v, "valid": valid} if return_state else None)

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.v_proj.weight.dtype
        return {"ema": torch.zeros(batch_size, self.d_model, self.ndim, device=device, dtype=dtype),
                "k": torch.zeros(batch_size, 0, self.z_dim, device=device, dtype=dtype),
                "v": torch.zeros(batch_size, 0, self.v_dim, device=device, dtype=dtype),
                "valid": torch.zeros(batch_size, 0, device=device, dtype=torch.bool)}
