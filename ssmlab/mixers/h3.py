"""H3: Hungry Hungry Hippos (Fu, Dao et al., arXiv 2212.14052).

Two SSMs with multiplicative interactions, designed to recall and compare
tokens like attention does::

    q, k, v = W_q u, W_k u, W_v u
    k~ = shift_ssm(k)                        remembers the last N keys
    y  = q * diag_ssm(k~ * v)                (head_dim 1; outer products per head otherwise)
    out = W_o y

The shift SSM has the shift matrix as A, so ``A^l B`` is B moved down by l and its
kernel ``K[l] = sum_n C[n] B[n - l]`` has N taps: a causal depthwise convolution,
plus a skip ``D k``. B and C are learnt per channel, B from ``e_1`` (where K = C),
as in the official code's shift kernel. The diagonal SSM is S4D's (arXiv 2206.11893)
with a learnt B, as the official code's diagonal mode, over every entry of the
per-head k~ v^T products. It is discretised by the bilinear transform,
``A_bar = (1 + dt A/2) / (1 - dt A/2)``, ``B_bar = dt B / (1 - dt A/2)``, as the official
code is (its diagonal kernel's default, which the H3 configurations keep), not by S4D's
zero-order hold.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import causal_conv
from ssmlab.layers.diagonal_ssm import DiagonalSSM
from ssmlab.mixers.base import Mixer, State, ssm_dtype, ssm_parameter
from ssmlab.registry import register


@register("mixer", "h3", description="H3: shift SSM and diagonal SSM with multiplicative gates",
          paper="2212.14052")
class H3(Mixer):
    """The H3 layer (arXiv 2212.14052).

    Args:
        d_model: width D.
        d_state: N, the taps of the shift SSM and the state size of the diagonal SSM (64).
        headdim: head size; 1 (default, as in the paper's models) multiplies elementwise,
            larger heads use the outer products ``k~ v^T`` of each head (``D * headdim`` SSM channels).
            The official code shares one diagonal SSM and one skip D per head across its
            ``headdim**2`` entries; here each entry has its own (the official layer is the case
            of equal copies), and the head outputs enter ``W_o`` in the order (head, j) where
            the official code uses (j, head).
        lr: learning rate for the diagonal SSM's A, B and dt (0.001), which get no weight decay.
        dt_min, dt_max: the diagonal SSM's step is initialised log-uniform in [0.001, 0.1].

    State: ``{"shift": (B, D, N - 1), "ssm": (B, D * headdim, N/2)}``: the last keys and the
    diagonal SSM's state.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, headdim: int = 1, lr: float | None = 0.001,
                 dt_min: float = 0.001, dt_max: float = 0.1, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if d_model % headdim:
            raise ValueError(f"h3: headdim={headdim} must divide d_model={d_model}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"h3: d_state must be an even number >= 2, got {d_state}")
        self.d_state, self.head_dim = d_state, headdim
        self.qkv = nn.Linear(d_model, 3 * d_model, **self.factory)
        b = torch.zeros(d_model, d_state, **self.factory)
        b[:, 0] = 1.0
        self.shift_B = nn.Parameter(b)
        self.shift_C = nn.Parameter(torch.randn(d_model, d_state, **self.factory))
        self.shift_D = ssm_parameter(torch.randn(d_model, device=device, dtype=ssm_dtype(dtype)), dtype,
                                     weight_decay=None)
        self.ssm = DiagonalSSM(d_model * headdim, d_state, lr=lr, dt_min=dt_min, dt_max=dt_max, learn_B=True,
                               disc="bilinear", **self.factory)
        self.out_proj = nn.Linear(d_model, d_model, **self.factory)

    def _mix(self, q, k, v):
        """(..., D) each -> the inputs of the diagonal SSM (..., D * head_dim)."""
        k = rearrange(k, "... (h i) -> ... h i 1", i=self.head_dim)
        v = rearrange(v, "... (h j) -> ... h 1 j", j=self.head_dim)
        return rearrange(k * v, "... h i j -> ... (h i j)")

    def _read(self, q, kv):
        """q (..., D), diagonal-SSM outputs (..., D * head_dim) -> (..., D)."""
        q = rearrange(q, "... (h i) -> ... h i 1", i=self.head_dim)
        kv = rearrange(kv, "... (h i j) -> ... h i j", i=self.head_dim, j=self.head_dim)
        return self.out_proj(rearrange((q * kv).sum(-2), "... h j -> ... (h j)"))

    def shift_kernel(self) -> torch.Tensor:
        """(D, N) taps of the shift SSM: ``K[l] = sum_{n >= l} C[n] B[n - l]``."""
        n = self.d_state
        # Row l of the shifted B holds B[n - l] at column n (zero where n < l).
        shifted = torch.stack([nn.functional.pad(self.shift_B[:, :n - l], (l, 0)) for l in range(n)], dim=1)
        return torch.einsum("dn,dln->dl", self.shift_C, shifted)

    def _shift(self, k, shift_state):
        # As a depthwise conv1d (cross-correlation), tap j multiplies the input j - (N - 1) steps back.
        y, shift_state = causal_conv(k, self.shift_kernel().flip(-1)[:, None], None, shift_state)
        return (y + self.shift_D * k).to(k.dtype), shift_state

    def _forward(self, x, state, return_state):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k, shift_state = self._shift(k, None if state is None else state["shift"])
        kv, h = self.ssm(self._mix(q, k, v), None if state is None else state["ssm"], return_state)
        return self._read(q, kv), ({"shift": shift_state, "ssm": h} if return_state else None)

    def _step(self, x_t, state):
        q, k, v = self.qkv(x_t).chunk(3, dim=-1)
        k, shift_state = self._shift(k[:, None], state["shift"])
        kv, h = self.ssm.step(self._mix(q, k[:, 0], v), state["ssm"])
        return self._read(q, kv), {"shift": shift_state, "ssm": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.qkv.weight.dtype
        return {"shift": torch.zeros(batch_size, self.d_model, self.d_state - 1, device=device, dtype=dtype),
                "ssm": self.ssm.init_state(batch_size, device=device, dtype=dtype)}
