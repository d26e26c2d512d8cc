"""Causal linear attention (Katharopoulos et al., "Transformers are RNNs", arXiv 2006.16236).

Softmax attention's ``exp(q . k)`` is replaced by ``phi(q) . phi(k)`` with a
positive feature map ``phi`` (``elu(x) + 1`` in the paper), so causal attention
becomes a recurrence with a constant-size state::

    S_t = S_{t-1} + phi(k_t)^T v_t            (K, V)
    z_t = z_{t-1} + phi(k_t)                  (K,)
    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

The same sums are computed three ways, all exact, by the op
:func:`ssmlab.ops.linear_attention`: the parallel form (a masked ``L x L``
product, like attention; its ``quadratic`` backend), the chunkwise form
(parallel inside chunks, the recurrence between chunks: linear in L; its
default ``torch`` backend) and the recurrent form (``step``, with
:func:`ssmlab.ops.linear_attention_step`). The normaliser is the op's output
for an extra value column of ones, and ``z`` the matching state column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.mixers.base import Mixer, State
from ssmlab.ops import linear_attention, linear_attention_step
from ssmlab.registry import register


_FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1.0,
    "relu": F.relu,
}


@register("mixer", "linear-attention", description="Causal linear attention with a positive feature map (elu + 1)",
          paper="2006.16236")
class LinearAttention(Mixer):
    """Causal multi-head linear attention (arXiv 2006.16236).

    ``y = W_o concat_h [phi(q) S_t / (phi(q) . z_t + eps)]`` with ``q, k, v`` linear projections of
    the input and ``S_t``, ``z_t`` the running sums of ``phi(k)^T v`` and ``phi(k)``.

    Args:
        d_model: width D.
        n_heads: number of heads H (default ``max(1, d_model // 64)``); D must be divisible by H.
        feature_map: ``"elu"`` (default, ``elu(x) + 1`` as in the paper) or ``"relu"``.
        form: how ``forward`` computes: ``"chunkwise"`` (default, linear in L; the op's default
            backend, so ``SSMLAB_LINEAR_ATTENTION_BACKEND`` applies) or ``"parallel"`` (the masked
            quadratic form, backend ``"quadratic"``). ``step`` is the recurrent form; all three are exact.
        chunk_size: chunk length of the chunkwise form (default 64).
        eps: added to the normaliser (default 1e-6, as in the paper's code).
        bias: whether the projections have biases (default False).

    State: ``{"S": (B, H, D/H, D/H), "z": (B, H, D/H)}``, the sums of ``phi(k)^T v`` and of
    ``phi(k)`` over the positions seen so far.
    """

    causal = True

    def __init__(self, d_model: int, n_heads: int | None = None, *, feature_map: str = "elu",
                 form: str = "chunkwise", chunk_size: int = 64, eps: float = 1e-6, bias: bool = False,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        n_heads = n_heads or max(1, d_model // 64)
        if d_model % n_heads:
            raise ValueError(f"linear-attention: d_model={d_model} must be divisible by n_heads={n_heads}")
        if feature_map not in _FEATURE_MAPS:
            raise ValueError(f"linear-attention: feature_map must be one of {sorted(_FEATURE_MAPS)}, "
                             f"got {feature_map!r}")
        if form not in ("chunkwise", "parallel"):
            raise ValueError(f"linear-attention: form must be 'chunkwise' or 'parallel', got {form!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"linear-attention: chunk_size must be a positive int, got {chunk_size!r}")
        if eps < 0:
            raise ValueError(f"linear-attention: eps must be >= 0, got {eps}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.feature_map, self.form, self.chunk_size, self.eps = feature_map, form, chunk_size, eps
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **self.factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **self.factory)

    def _project(self, x):
        """Feature-mapped queries and keys (..., H, E) and values with a column of ones (..., H, E + 1),
        whose last output column is then the normaliser ``phi(q) . z``."""
        q, k, v = rearrange(self.qkv(x), "... (three h e) -> three ... h e", three=3, h=self.n_heads)
        phi = _FEATURE_MAPS[self.feature_map]
        return phi(q), phi(k), torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    def _output(self, y_aug):
        """Divide by the normaliser and project: (..., H, E + 1) -> (..., D)."""
        y = y_aug[..., :-1] / (y_aug[..., -1:] + self.eps)
        return self.out_proj(y.flatten(-2))

    @staticmethod
    def _merge(state):
        return torch.cat([state["S"], state["z"][..., None]], dim=-1)  # (B, H, K, V + 1)

    @staticmethod
    def _split(merged):
        return {"S": merged[..., :-1], "z": merged[..., -1]}

    def _forward(self, x, state, return_state):
        q, k, v = self._project(x)
        backend = "quadratic" if self.form == "parallel" else None
        y, final = linear_attention(q, k, v, initial_state=None if state is None else self._merge(state),
                                    return_final_state=True, chunk_size=self.chunk_size, backend=backend)
        return self._output(y), (self._split(final) if return_state else None)

    def _step(self, x_t, state):
        q, k, v = self._project(x_t)
        y, merged = linear_attention_step(q, k, v, self._merge(state))
        return self._output(y), self._split(merged)

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.qkv.weight.dtype
        e = self.head_dim
        return {"S": torch.zeros(batch_size, self.n_heads, e, e, device=device, dtype=dtype),
                "z": torch.zeros(batch_size, self.n_heads, e, device=device, dtype=dtype)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, feature_map={self.feature_map!r}, "
                f"form={self.form!r}, chunk_size={self.chunk_size}")
