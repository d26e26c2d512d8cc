"""Causal multi-head softmax attention, the transformer baseline (arXiv 1706.03762).

Forward uses ``torch.nn.functional.scaled_dot_product_attention``; the
recurrent state for ``step`` and for continuing a sequence is the key/value
cache, so its size grows with the context (unlike an SSM's state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.mixers.base import Mixer, State
from ssmlab.registry import register


@register("mixer", "attention", description="Causal multi-head softmax attention with a KV cache",
          paper="1706.03762")
class Attention(Mixer):
    """Causal multi-head self-attention.

    Args:
        d_model: model width D.
        n_heads: number of heads H; default ``max(1, d_model // 64)``. D must be divisible by H.
        bias: whether the projections have biases (default False).
        dropout: attention dropout probability during training (default 0.0).

    State: ``{"k": (B, H, T, D/H), "v": (B, H, T, D/H)}``, the keys and values of
    the ``T`` positions seen so far.
    """

    causal = True
    _state_growing_dims = {"k": (2,), "v": (2,)}

    def __init__(self, d_model: int, n_heads: int | None = None, *, bias: bool = False, dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__(d_model)
        n_heads = n_heads or max(1, d_model // 64)
        if d_model % n_heads:
            raise ValueError(f"attention: d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)

    def _project(self, x: torch.Tensor):
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        return q, k, v  # each (B, H, L, E)

    def _forward(self, x, state, return_state):
        q, k, v = self._project(x)
        dropout = self.dropout if self.training else 0.0
        if state is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            past = state["k"].shape[2]
            k = torch.cat([state["k"], k], dim=2)
            v = torch.cat([state["v"], v], dim=2)
            length = q.shape[2]
            # Query i sits at absolute position past + i and sees keys 0 .. past + i.
            mask = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.out_proj(rearrange(y, "b h l e -> b l (h e)"))
        return y, ({"k": k, "v": v} if return_state else None)

    def _step(self, x_t, state):
        y, new_state = self._forward(x_t[:, None], state, True)
        return y[:, 0], new_state

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype or self.qkv.weight.dtype
        shape = (batch_size, self.n_heads, 0, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype)}
