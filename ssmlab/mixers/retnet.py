"""RetNet: multi-scale retention (Sun et al., "Retentive Network", arXiv 2307.08621).

Retention is linear attention with a fixed exponential decay ``gamma`` per head
and rotary (xPos-style) relative positions. For one head, with ``q``, ``k``
rotated by their absolute positions n::

    S_n = gamma S_{n-1} + k_n^T v_n           (Dk, Dv)
    o_n = q_n S_n = sum_{m <= n} gamma^(n - m) (q_n . k_m) v_m

Heads use the decays ``gamma_h = 1 - 2^(-5 - h)``, so they look back over
different time scales (the "multi-scale" part). The outputs of each head are
group-normalised, gated by ``swish(x W_G)`` and projected by ``W_O``.

Three forms compute the same thing exactly, all with the op
:func:`ssmlab.ops.linear_attention` (retention is its decayed case): parallel
(a masked ``L x L`` product, the op's ``quadratic`` backend), chunkwise
(parallel inside chunks, recurrent between them, the op's default backend) and
recurrent (``step``, :func:`ssmlab.ops.linear_attention_step`). The score normalisations of section 2.4 of the paper
(``QK^T / sqrt(d)``; decay rows divided by ``sqrt(sum_i D_ni)``; rows of the
scores divided by ``max(|sum_i R_ni|, 1)``) are applied identically in all three:
the row sums are the running key sum ``z_n = gamma z_{n-1} + k_n``, carried in
the state, and the decay row sums depend only on the absolute position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.rotary import apply_rotary
from ssmlab.mixers.base import Mixer, State
from ssmlab.ops import linear_attention, linear_attention_step
from ssmlab.registry import register

_FORMS = ("chunkwise", "parallel", "recurrent")


@register("mixer", "retnet", description="RetNet multi-scale retention: decayed linear attention, rotary, gated",
          paper="2307.08621")
class RetNet(Mixer):
    """Multi-scale retention (MSR) of RetNet (arXiv 2307.08621).

    ``MSR(X) = (swish(X W_G) * GroupNorm(concat_h Retention_h(X))) W_O`` with
    ``q = rot(X W_Q)``, ``k = rot(X W_K) / sqrt(Dk)``, ``v = X W_V``.

    Args:
        d_model: width D.
        n_heads: number of heads H (default ``max(1, d_model // 256)``: the paper's head size of 256);
            D must be divisible by H and D/H even (for the rotation).
        expand_v: value (and gate) width as a multiple of D (default 2, as in the paper).
        form: how ``forward`` computes: ``"chunkwise"`` (default), ``"parallel"`` or
            ``"recurrent"`` (a loop over ``step``). All three are exact; ``step`` is recurrent.
        chunk_size: chunk length of the chunkwise form (default 64).
        normalize: apply the score normalisations of section 2.4 (default True). They rescale
            each output row, which the group norm mostly cancels, and keep values in range.
        rotary_base: frequency base of the rotary relative positions (default 10000). The paper's
            xPos rotation ``e^{i n theta}`` is RoPE (arXiv 2104.09864); xPos's extra decay is
            absorbed into ``gamma``. The angles are RoPE's ``theta_i = base^(-2i/Dk)``; the authors'
            code (torchscale) spaces the exponents evenly from 0 to 1, ``theta_i = 10000^(-i/(Dk/2 - 1))``,
            which is this rotation with ``rotary_base = 10000^(Dk/(Dk - 2))``.
        norm_eps: epsilon of the group norm (default 1e-6).

    Decays: ``gamma_h = 1 - 2^(-5 - h)``, h = 0 .. H-1, fixed (not trained), as in the paper.
    The group norm is a per-head layer norm with a learnt scale and shift (initialised to the
    identity); the first torchscale release uses a non-affine layer norm, later releases a
    non-affine RMSNorm. torchscale's recurrent form keeps ``S_n / sum_k gamma^k`` and skips the
    row-sum normalisation; both rescale each row, which the group norm cancels up to its epsilon.
    Projections use Xavier-uniform init with gain ``2^-2.5`` for W_Q, W_K, W_V, W_G and gain 1
    for W_O, as in the authors' code.

    State: ``{"kv": (B, H, Dk, Dv), "z": (B, H, Dk), "pos": (B,)}`` with Dk = D/H and
    Dv = expand_v D/H: the decayed sums of ``k^T v`` and (only with ``normalize``) of ``k``, in
    float32 or wider (retention is computed in float32 or wider), and the number of positions
    seen so far (int64), which is the rotation offset and sets the decay normalisation.
    """

    causal = True

    def __init__(self, d_model: int, n_heads: int | None = None, *, expand_v: int = 2, form: str = "chunkwise",
                 chunk_size: int = 64, normalize: bool = True, rotary_base: float = 10000.0,
                 norm_eps: float = 1e-6, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        n_heads = n_heads or max(1, d_model // 256)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"retnet: n_heads={n_heads} must divide d_model={d_model} into heads of even size")
        if not isinstance(expand_v, int) or expand_v < 1:
            raise ValueError(f"retnet: expand_v must be a positive int, got {expand_v!r}")
        if form not in _FORMS:
            raise ValueError(f"retnet: form must be one of {_FORMS}, got {form!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"retnet: chunk_size must be a positive int, got {chunk_size!r}")
        if rotary_base <= 1:
            raise ValueError(f"retnet: rotary_base must be > 1, got {rotary_base}")
        self.n_heads, self.key_dim, self.value_dim = n_heads, d_model // n_heads, expand_v * d_model // n_heads
        self.form, self.chunk_size, self.normalize = form, chunk_size, normalize
        self.rotary_base, self.norm_eps = float(rotary_base), norm_eps
        dv = expand_v * d_model
        self.q_proj = nn.Linear(d_model, d_model, bias=False, **self.factory)
        self.k_proj = nn.Linear(d_model, d_model, bias=False, **self.factory)
        self.v_proj = nn.Linear(d_model, dv, bias=False, **self.factory)
        self.g_proj = nn.Linear(d_model, dv, bias=False, **self.factory)
        self.out_proj = nn.Linear(dv, d_model, bias=False, **self.factory)
        self.norm_weight = nn.Parameter(torch.ones(dv, **self.factory))
        self.norm_bias = nn.Parameter(torch.zeros(dv, **self.factory))
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2 ** -2.5)
        nn.init.xavier_uniform_(self.out_proj.weight)

    def _log_gamma(self, like: torch.Tensor) -> torch.Tensor:
        """``log(1 - 2^(-5 - h))`` (H,), computed in float64 and cast to ``like``'s dtype."""
        heads = torch.arange(self.n_heads, device=like.device, dtype=torch.float64)
        return torch.log1p(-(2.0 ** (-5.0 - heads))).to(like.dtype)

    def _project(self, x, start):
        """Rotated q, scaled rotated k (B, L, H, Dk) and v (B, L, H, Dv [+1]) of ``x`` (B, L, D)
        whose first position is ``start`` (B,), in float32 or wider. With ``normalize`` v gets a
        column of ones, so the last output column is the score row sum ``q_n . z_n``."""
        compute = torch.promote_types(x.dtype, torch.float32)
        q = rearrange(self.q_proj(x).to(compute), "b l (h e) -> b h l e", h=self.n_heads)
        k = rearrange(self.k_proj(x).to(compute), "b l (h e) -> b h l e", h=self.n_heads)
        positions = start[:, None, None] + torch.arange(x.shape[1], device=x.device)  # (B, 1, L)
        q = apply_rotary(q, positions, base=self.rotary_base, interleaved=True)
        k = apply_rotary(k, positions, base=self.rotary_base, interleaved=True) / math.sqrt(self.key_dim)
        v = rearrange(self.v_proj(x).to(compute), "b l (h e) -> b l h e", h=self.n_heads)
        if self.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return q.transpose(1, 2), k.transpose(1, 2), v

    def _output(self, x, o, start):
        """Normalise the retention ``o`` (B, L, H, Dv [+1]) of positions ``start + 0 .. L-1``, then
        group norm, swish gate and output projection -> (B, L, D)."""
        if self.normalize:
            positions = start[:, None] + torch.arange(x.shape[1], device=x.device)  # (B, L)
            # sqrt(sum_{i=0}^{n} gamma^i), the row sum of the decay matrix, (B, L, H).
            log_gamma = self._log_gamma(o)
            decay_norm = torch.sqrt(torch.expm1(log_gamma * (positions[..., None] + 1)) / torch.expm1(log_gamma))
            o = o / decay_norm[..., None]
            o = o[..., :-1] / o[..., -1:].abs().clamp_min(1.0)
        mean = o.mean(-1, keepdim=True)
        var = (o - mean).square().mean(-1, keepdim=True)
        o = ((o - mean) * torch.rsqrt(var + self.norm_eps)).flatten(-2).to(x.dtype)  # (B, L, H Dv)
        o = o * self.norm_weight + self.norm_bias
        return self.out_proj(F.silu(self.g_proj(x)) * o)

    def _unpack(self, state, batch, x):
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        compute = torch.promote_types(x.dtype, torch.float32)
        kv = state["kv"].to(compute)
        if self.normalize:
            kv = torch.cat([kv, state["z"][..., None].to(compute)], dim=-1)
        return kv, state["pos"]

    def _pack(self, kv, pos):
        if self.normalize:
            return {"kv": kv[..., :-1], "z": kv[..., -1], "pos": pos}
        return {"kv": kv, "pos": pos}

    def _forward(self, x, state, return_state):
        if self.form == "recurrent":
            return self._forward_recurrent(x, state, return_state)
        batch, length = x.shape[:2]
        kv, start = self._unpack(state, batch, x)
        q, k, v = self._project(x, start)
        backend = "quadratic" if self.form == "parallel" else None
        o, kv = linear_attention(q, k, v, log_decay=self._log_gamma(q), initial_state=kv, return_final_state=True,
                                 chunk_size=self.chunk_size, backend=backend)
        y = self._output(x, o, start)
        return y, (self._pack(kv, start + length) if return_state else None)

    def _forward_recurrent(self, x, state, return_state):
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        outs = []
        for t in range(x.shape[1]):
            y_t, state = self._step(x[:, t], state)
            outs.append(y_t)
        return torch.stack(outs, dim=1), (state if return_state else None)

    def _step(self, x_t, state):
        kv, start = self._unpack(state, x_t.shape[0], x_t)
        x = x_t[:, None]
        q, k, v = self._project(x, start)  # (B, 1, H, *)
        o, kv = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], kv, log_decay=self._log_gamma(q))
        return self._output(x, o[:, None], start)[:, 0], self._pack(kv, start + 1)

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = torch.promote_types(dtype or self.q_proj.weight.dtype, torch.float32)
        state = {"kv": torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=dtype),
                 "pos": torch.zeros(batch_size, device=device, dtype=torch.long)}
        if self.normalize:
            state["z"] = torch.zeros(batch_size, self.n_heads, self.key_dim, device=device, dtype=dtype)
        return state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, key_dim={self.key_dim}, "
                f"value_dim={self.value_dim}, form={self.form!r}, chunk_size={self.chunk_size}, "
                f"normalize={self.normalize}")
