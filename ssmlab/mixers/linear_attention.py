"""Causal linear attention (Katharopoulos et al., "Transformers are RNNs", arXiv 2006.16236).

Softmax attention's ``exp(q . k)`` is replaced by ``phi(q) . phi(k)`` with a
positive feature map ``phi`` (``elu(x) + 1`` in the paper), so causal attention
becomes a recurrence with a constant-size state::

    S_t = S_{t-1} + phi(k_t)^T v_t            (K, V)
    z_t = z_{t-1} + phi(k_t)                  (K,)
    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

The same sums are computed three ways, all exact: the parallel form (a masked
``L x L`` product, like attention), the chunkwise form (parallel inside chunks,
the recurrence between chunks: linear in L) and the recurrent form (``step``).

The module-level functions :func:`causal_linear_attention` and
:func:`causal_linear_attention_step` also take a per-head decay ``gamma``
(``S_t = gamma S_{t-1} + k_t^T v_t``): that is RetNet's retention
(arXiv 2307.08621), which :mod:`ssmlab.mixers.retnet` builds on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.mixers.base import Mixer, State
from ssmlab.ops import linear_scan
from ssmlab.registry import register


def _decay_powers(log_decay: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``gamma ** exponents`` for integer exponents, zero where an exponent is negative.

    ``log_decay`` (H,) and ``exponents`` (...) give (H, ...).
    """
    shape = (-1,) + (1,) * exponents.dim()
    powers = torch.exp(log_decay.view(shape) * exponents.clamp_min(0).to(log_decay.dtype))
    return powers * (exponents >= 0).to(log_decay.dtype)


def _parallel(q, k, v, log_decay, state):
    """The quadratic form: ``y = (q k^T o D) v + gamma^(i+1) q S0``; layouts (B, H, L, *)."""
    length = q.shape[2]
    idx = torch.arange(length, device=q.device)
    decay = _decay_powers(log_decay, idx[:, None] - idx[None, :])  # (H, L, L)
    y = ((q @ k.transpose(-1, -2)) * decay) @ v  # (B, H, L, V)
    y = y + _decay_powers(log_decay, idx + 1)[..., None] * (q @ state)
    to_end = _decay_powers(log_decay, length - 1 - idx)  # (H, L)
    final = (k * to_end[..., None]).transpose(-1, -2) @ v + _decay_powers(log_decay, idx.new_tensor(length))[
        :, None, None] * state  # (B, H, K, V)
    return y, final


def _chunkwise(q, k, v, log_decay, state, chunk_size):
    """Parallel inside chunks of ``chunk_size``, the recurrence between chunks; layouts (B, H, L, *).

    The state entering each chunk comes from ``linear_scan`` over the chunks with
    decay ``gamma ** chunk_length``.
    """
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    size = min(chunk_size, length)
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.unflatten(2, (n_chunks, size)) for t in (q, k, v))  # (B, H, n, C, *)
    idx = torch.arange(size, device=q.device)
    lengths = torch.full((n_chunks,), size, device=q.device)
    lengths[-1] = size - pad
    intra = _decay_powers(log_decay, idx[:, None] - idx[None, :])[:, None]  # (H, 1, C, C)
    y = ((q @ k.transpose(-1, -2)) * intra) @ v  # (B, H, n, C, V)
    # Decay from each position to the end of its chunk; zero on padding.
    to_end = _decay_powers(log_decay, lengths[:, None] - 1 - idx)  # (H, n, C)
    chunk_sums = (k * to_end[..., None]).transpose(-1, -2) @ v  # (B, H, n, K, V)
    chunk_decay = _decay_powers(log_decay, lengths)  # (H, n)
    a = rearrange(chunk_decay, "h n -> n h")[None, :, :, None, None].expand(batch, -1, -1, dk, dv)
    after = linear_scan(a, rearrange(chunk_sums, "b h n k v -> b n h k v"), initial_state=state)
    before = torch.cat([state[:, None], after[:, :-1]], dim=1)  # (B, n, H, K, V)
    y = y + _decay_powers(log_decay, idx + 1)[:, None, :, None] * (q @ rearrange(before, "b n h k v -> b h n k v"))
    y = y.flatten(2, 3)[:, :, :length]
    return y, after[:, -1]


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            log_decay: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
                            chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised causal linear attention with an optional per-head decay.

    ``y_i = sum_{j <= i} gamma^(i - j) (q_i . k_j) v_j + gamma^(i + 1) q_i S0``, i.e. the recurrence
    ``S_t = gamma S_{t-1} + k_t^T v_t``, ``y_t = q_t S_t`` (arXiv 2006.16236; with gamma, the retention
    of arXiv 2307.08621).

    Args:
        q, k: (B, L, H, K) (feature maps already applied).
        v: (B, L, H, V).
        log_decay: (H,) ``log gamma <= 0``; ``None`` for no decay (gamma = 1).
        initial_state: S0 (B, H, K, V); zeros by default.
        chunk_size: ``None`` for the parallel (quadratic) form, else the chunk length of the
            chunkwise form.

    Returns ``y`` (B, L, H, V) and the final state (B, H, K, V).
    """
    batch, _, heads, dk = q.shape
    if log_decay is None:
        log_decay = q.new_zeros(heads)
    if initial_state is None:
        initial_state = q.new_zeros(batch, heads, dk, v.shape[-1])
    q, k, v = (rearrange(t, "b l h e -> b h l e") for t in (q, k, v))
    if chunk_size is None:
        y, final = _parallel(q, k, v, log_decay, initial_state)
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
        y, final = _chunkwise(q, k, v, log_decay, initial_state, chunk_size)
    return rearrange(y, "b h l e -> b l h e"), final


def causal_linear_attention_step(q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, state: torch.Tensor, *,
                                 log_decay: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of :func:`causal_linear_attention`: ``S = gamma S + k^T v``, ``y = q S``.

    ``q_t``, ``k_t`` (B, H, K); ``v_t`` (B, H, V); ``state`` (B, H, K, V); ``log_decay`` (H,) or None.
    Returns ``y_t`` (B, H, V) and the new state.
    """
    if log_decay is not None:
        state = torch.exp(log_decay)[:, None, None] * state
    state = state + k_t[..., :, None] * v_t[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


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
        form: how ``forward`` computes: ``"chunkwise"`` (default, linear in L) or ``"parallel"``
            (the masked quadratic form). ``step`` is the recurrent form; all three are exact.
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
        super().__init__(d_model)
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
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)

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
        chunk = self.chunk_size if self.form == "chunkwise" else None
        y, final = causal_linear_attention(q, k, v, initial_state=None if state is None else self._merge(state),
                                           chunk_size=chunk)
        return self._output(y), (self._split(final) if return_state else None)

    def _step(self, x_t, state):
        q, k, v = self._project(x_t)
        y, merged = causal_linear_attention_step(q, k, v, self._merge(state))
        return self._output(y), self._split(merged)

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype or self.qkv.weight.dtype
        e = self.head_dim
        return {"S": torch.zeros(batch_size, self.n_heads, e, e, device=device, dtype=dtype),
                "z": torch.zeros(batch_size, self.n_heads, e, device=device, dtype=dtype)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, feature_map={self.feature_map!r}, "
                f"form={self.form!r}, chunk_size={self.chunk_size}")
