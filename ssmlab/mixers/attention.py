"""Causal multi-head softmax attention, the transformer baseline (arXiv 1706.03762).

Positions are encoded with rotary embeddings (RoPE, arXiv 2104.09864) applied to
queries and keys at their absolute positions, so the scores depend only on
relative positions. An optional sliding window limits each query to the last
``window`` keys (itself included), as in Longformer / Mistral-style local attention.

Forward uses ``torch.nn.functional.scaled_dot_product_attention``; the
recurrent state for ``step`` and for continuing a sequence is the key/value
cache, so its size grows with the context (unlike an SSM's state), or stays at
``window - 1`` positions with a sliding window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.rotary import apply_rotary
from ssmlab.mixers.base import Mixer, State, StepFromForward
from ssmlab.registry import register


@register("mixer", "attention", description="Causal multi-head softmax attention with a KV cache",
          paper="1706.03762")
class Attention(StepFromForward, Mixer):
    """Causal multi-head self-attention (arXiv 1706.03762) with rotary positions (arXiv 2104.09864).

    Args:
        d_model: model width D.
        n_heads: number of heads H; default ``max(1, d_model // 64)``. D must be divisible by H.
        rotary: rotate queries and keys by their absolute positions, RoPE (default True);
            needs an even head size D/H. Without it the mixer has no position information.
        rotary_base: RoPE frequency base (default 10000).
        window: ``None`` (default) for full causal attention, or an int ``w >= 1``: the query at
            position n sees the keys at positions ``n - w + 1 .. n``. The KV cache then keeps
            only the last ``w - 1`` positions.
        bias: whether the projections have biases (default False).
        dropout: attention dropout probability during training (default 0.0).

    State: ``{"k": (B, H, T, D/H), "v": (B, H, T, D/H), "pos": (B,)}``: the keys (already
    rotated) and values of the ``T`` cached positions (all positions seen so far, or the last
    ``window - 1``), and ``pos``, the number of positions seen so far (int64), which is the
    absolute position of the next token and the offset of its rotation; ``"valid": (B, T)``
    marks the cached positions that are real: after a padded batch (``lengths``) each row's
    cache is right-aligned, with invalid (padding) entries in front.
    """

    causal = True
    _state_growing_dims = {"k": (2,), "v": (2,), "valid": (1,)}

    def __init__(self, d_model: int, n_heads: int | None = None, *, rotary: bool = True,
                 rotary_base: float = 10000.0, window: int | None = None, bias: bool = False,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        n_heads = n_heads or max(1, d_model // 64)
        if d_model % n_heads:
            raise ValueError(f"attention: d_model={d_model} must be divisible by n_heads={n_heads}")
        if rotary and (d_model // n_heads) % 2:
            raise ValueError(f"attention: rotary embeddings need an even head size, got d_model/n_heads="
                             f"{d_model // n_heads}")
        if rotary and rotary_base <= 1:
            raise ValueError(f"attention: rotary_base must be > 1, got {rotary_base}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"attention: window must be None or a positive int, got {window!r}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rotary, self.rotary_base, self.window = rotary, float(rotary_base), window
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **self.factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **self.factory)

    def _project(self, x: torch.Tensor, start: torch.Tensor):
        """Queries, keys, values (B, H, L, E) of ``x`` (B, L, D) whose first position is ``start`` (B,)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        if self.rotary:
            positions = start[:, None, None] + torch.arange(x.shape[1], device=x.device)  # (B, 1, L)
            q = apply_rotary(q, positions, base=self.rotary_base)
            k = apply_rotary(k, positions, base=self.rotary_base)
        return q, k, v

    def _mask(self, length: int, past: int, device) -> torch.Tensor:
        """Boolean (L, T + L) mask: query i (key index past + i) sees key j when
        ``past + i - window < j <= past + i``."""
        i = torch.arange(length, device=device)[:, None] + past
        j = torch.arange(past + length, device=device)[None]
        mask = j <= i
        if self.window is not None:
            mask = mask & (j > i - self.window)
        return mask

    def _forward(self, x, state, return_state):
        batch, length = x.shape[:2]
        start = state["pos"] if state is not None else torch.zeros(batch, dtype=torch.long, device=x.device)
        q, k, v = self._project(x, start)
        past, valid = 0, torch.ones(batch, length, dtype=torch.bool, device=x.device)
        if state is not None:
            past = state["k"].shape[2]
            k = torch.cat([state["k"], k], dim=2)
            v = torch.cat([state["v"], v], dim=2)
            valid = torch.cat([state["valid"], valid], dim=1)
        dropout = self.dropout if self.training else 0.0
        if past == 0 and (self.window is None or self.window >= length):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            mask = self._mask(length, past, x.device)
            if not bool(valid.all()):
                mask = mask & valid[:, None, None, :]  # (B, 1, L, T + L)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.out_proj(rearrange(y, "b h l e -> b l (h e)"))
        if not return_state:
            return y, None
        if self.window is not None:
            keep = max(0, k.shape[2] - (self.window - 1))
            k, v, valid = k[:, :, keep:], v[:, :, keep:], valid[:, keep:]
        return y, {"k": k, "v": v, "pos": start + length, "valid": valid}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.qkv.weight.dtype
        shape = (batch_size, self.n_heads, 0, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype),
                "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
                "valid": torch.zeros(batch_size, 0, device=device, dtype=torch.bool)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, rotary={self.rotary}, "
                f"window={self.window}")
