"""Gated linear attention (GLA, arXiv 2312.06635) and HGRN2 (arXiv 2404.07904) on ``ssmlab.ops.gla``.

Both follow flash-linear-attention's ``fla/layers/gla.py`` and ``fla/layers/hgrn2.py``. The
recurrence is ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = K^-0.5 S_t^T q_t`` per head,
state (B, H, K, V). GLA's per-key log forget gate comes from a low-rank projection,
``g = logsigmoid(gk_proj(x)) / 16``, and its output is a per-head RMSNorm gated by
``silu(g_proj(x))``; HGRN2 is the same op with the input gate tied to the forget gate,
``g = logsigmoid(f_proj(x))``, ``k = 1 - exp(g)``, ``q = silu(q_proj(x))``, the input as the
value, and an RMSNorm over the whole width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import ShortConvolution
from ssmlab.layers.norm import RMSNorm
from ssmlab.mixers.base import LengthsInForward, Mixer, padding_mask, State
from ssmlab.ops import gla, gla_step
from ssmlab.registry import register


class _GLARecurrence(LengthsInForward, Mixer):
    """Shared by GLA and HGRN2: three streams (q, k, v or q, f, i) through optional short convolutions,
    the GLA op, and an output stage. Subclasses define ``_streams``, ``_qkvg`` and ``_output``.

    State: ``{"memory": (B, H, K, V)}`` in float32 at least, plus ``"conv_<stream>"`` (B, C, w - 1)
    for each stream when ``use_short_conv``.
    """

    causal = True

    def _init_convs(self, widths: dict[str, int], use_short_conv: bool, conv_size: int, conv_bias: bool):
        if use_short_conv and conv_size < 1:
            raise ValueError(f"{self.registry_name}: conv_size must be >= 1, got {conv_size}")
        self.use_short_conv = use_short_conv
        self.convs = nn.ModuleDict({name: ShortConvolution(width, conv_size, bias=conv_bias, **self.factory)
                                    for name, width in widths.items()}) if use_short_conv else None

    def _projected(self, x, state, lengths=None, step=False):
        """The streams after their projections and convolutions, and the new conv states."""
        out, convs = {}, {}
        for name, proj in self._streams().items():
            u = proj(x)
            if self.convs is not None:
                key = f"conv_{name}"
                if step:
                    u, convs[key] = self.convs[name].step(u, state[key])
                else:
                    u, convs[key] = self.convs[name](u, None if state is None else state[key], return_state=True,
                                                     lengths=lengths)
                u = self._conv_activation(u)
            out[name] = u
        return out, convs

    def _conv_activation(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def _forward(self, x, state, return_state, lengths=None):
        streams, convs = self._projected(x, state, lengths)
        q, k, v, g = self._qkvg(x, streams)
        if lengths is not None:
            # k = 0 and g = 0 at padded positions leave the memory as it was.
            real = padding_mask(lengths, x.shape[1])[..., None, None]  # (B, L, 1, 1)
            k, g = k * real, g * real
        o, memory = gla(q, k, v, g, initial_state=None if state is None else state["memory"],
                        return_final_state=True, chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(o.to(x.dtype), x)
        return y, ({**convs, "memory": memory} if return_state else None)

    def _step(self, x_t, state):
        streams, convs = self._projected(x_t, state, step=True)
        q, k, v, g = self._qkvg(x_t, streams)
        o, memory = gla_step(q, k, v, g, state["memory"])
        return self._output(o.to(x_t.dtype), x_t), {**convs, "memory": memory}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        state = {}
        if self.convs is not None:
            state = {f"conv_{name}": conv.init_state(batch_size, device=device, dtype=dtype)
                     for name, conv in self.convs.items()}
        state["memory"] = torch.zeros(batch_size, self.num_heads, self.head_k_dim, self.head_v_dim, device=device,
                                      dtype=torch.promote_types(dtype, torch.float32))
        return state


@register("mixer", "gla", description="Gated linear attention: per-key data-dependent decay (fla's layer)",
          paper="2312.06635")
class GLA(_GLARecurrence):
    """Gated linear attention (Yang et al., arXiv 2312.06635), as flash-linear-attention's
    ``GatedLinearAttention`` layer.

    Args (defaults as fla's):
        d_model: width D.
        num_heads: heads H (4); K = expand_k * D / H, V = expand_v * D / H.
        expand_k, expand_v: key and value widths over D (0.5, 1.0).
        gate_low_rank_dim: rank of the forget-gate projection ``gk_proj`` (16): Linear(D, r) without
            bias, then Linear(r, H*K) with bias.
        gate_logit_normalizer: ``g = logsigmoid(gk_proj(x)) / gate_logit_normalizer`` (16).
        clamp_min: lower clamp of g (None: none).
        use_output_gate: multiply the normalised output by ``silu(g_proj(x))`` (True).
        use_short_conv: short convolutions with SiLU on q, k, v (False); conv_size (4), conv_bias (False).
        norm_eps: epsilon of the per-head output RMSNorm (1e-5).
        chunk_size, backend: of ``ssmlab.ops.gla`` (64, None).

    Kept from fla's defaults only: ``feature_map=None``, ``num_kv_heads=num_heads``,
    ``gate_fn="swish"``, ``elementwise_affine=True``. ``out_proj`` is fla's ``o_proj`` and ``norm``
    its ``g_norm_swish_gate``; the convolutions are ``convs.q/k/v`` (fla's ``q_conv1d`` ...), and their
    states keep ``conv_size - 1`` inputs.

    State: ``{"memory": (B, H, K, V)}``, plus ``"conv_q"``, ``"conv_k"``, ``"conv_v"`` with short convolutions.
    """

    def __init__(self, d_model: int, num_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0, *,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16, clamp_min: float | None = None,
                 use_output_gate: bool = True, use_short_conv: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, norm_eps: float = 1e-5, chunk_size: int = 64, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if num_heads < 1 or key_dim < num_heads or key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"gla: key width {key_dim} and value width {value_dim} must be positive multiples of "
                             f"num_heads={num_heads}")
        self.num_heads, self.head_k_dim, self.head_v_dim = num_heads, key_dim // num_heads, value_dim // num_heads
        self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
        self.chunk_size, self.backend = chunk_size, backend
        f = self.factory
        self.q_proj = nn.Linear(d_model, key_dim, bias=False, **f)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False, **f)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False, **f)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False, **f) if use_output_gate else None
        self._init_convs({"q": key_dim, "k": key_dim, "v": value_dim}, use_short_conv, conv_size, conv_bias)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False, **f),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True, **f))
        self.norm = RMSNorm(self.head_v_dim, norm_eps, **f)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False, **f)

    def _streams(self):
        return {"q": self.q_proj, "k": self.k_proj, "v": self.v_proj}

    def _conv_activation(self, u):
        return F.silu(u)

    def _qkvg(self, x, streams):
        q, k = (rearrange(streams[n], "... (h d) -> ... h d", d=self.head_k_dim) for n in "qk")
        v = rearrange(streams["v"], "... (h d) -> ... h d", d=self.head_v_dim)
        g = F.logsigmoid(rearrange(self.gk_proj(x), "... (h d) -> ... h d", d=self.head_k_dim))
        g = g / self.gate_logit_normalizer
        if self.clamp_min is not None:
            g = g.clamp_min(self.clamp_min)
        return q, k, v, g

    def _output(self, o, x):
        o = self.norm(o)  # (..., H, V)
        if self.g_proj is not None:
            o = o * F.silu(rearrange(self.g_proj(x), "... (h d) -> ... h d", d=self.head_v_dim))
        return self.out_proj(rearrange(o, "... h d -> ... (h d)"))


@register("mixer", "hgrn2", description="HGRN2: gated linear RNN with state expansion, on the GLA op (fla's layer)",
          paper="2404.07904")
class HGRN2(_GLARecurrence):
    """HGRN2 (Qin et al., arXiv 2404.07904), as flash-linear-attention's ``HGRN2Attention`` layer:
    the GLA op with ``g = logsigmoid(f_proj(x))``, the input gate tied to it (``k = 1 - exp(g)``),
    ``q = silu(q_proj(x))``, the input ``i_proj(x)`` as the value and an RMSNorm over the width D.

    Args (defaults as fla's):
        d_model: width D.
        expand_ratio: state expansion, the key size K per head (128); the number of heads is
            ``D // expand_ratio``, as fla. Pass ``expand_ratio=None`` and ``num_heads`` for K = D / H.
        num_heads: used only when ``expand_ratio`` is None.
        use_short_conv: short convolutions without activation on q, f, i (False); conv_size (4),
            conv_bias (False).
        norm_eps: epsilon of the output RMSNorm (1e-5).
        chunk_size, backend: of ``ssmlab.ops.gla`` (64, None).

    The per-layer lower bound of the forget gate (HGRN2's model-level ``lower_bound``, passed to the
    layers after the first by fla's ``HGRN2Model``) is not part of the layer and is not provided:
    this is fla's first layer, or ``lower_bound=None``. ``out_proj`` is fla's ``o_proj`` and ``norm``
    its ``g_norm`` (whose weight fla keeps in float32; here the factory dtype).

    State: ``{"memory": (B, H, K, D / H)}``, plus ``"conv_q"``, ``"conv_f"``, ``"conv_i"`` with short
    convolutions.
    """

    def __init__(self, d_model: int, expand_ratio: int | None = 128, num_heads: int | None = None, *,
                 use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5,
                 chunk_size: int = 64, backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if expand_ratio is not None:
            num_heads = d_model // expand_ratio
        elif num_heads is not None:
            expand_ratio = d_model // num_heads
        else:
            raise ValueError("hgrn2: one of expand_ratio or num_heads must be given")
        if num_heads < 1 or expand_ratio < 1 or d_model % num_heads:
            raise ValueError(f"hgrn2: d_model={d_model} must be a multiple of the number of heads {num_heads} "
                             f"(d_model // expand_ratio), and both >= 1")
        self.num_heads, self.head_k_dim, self.head_v_dim = num_heads, expand_ratio, d_model // num_heads
        self.chunk_size, self.backend = chunk_size, backend
        forget_dim, f = num_heads * expand_ratio, self.factory
        self.q_proj = nn.Linear(d_model, forget_dim, bias=False, **f)
        self.f_proj = nn.Linear(d_model, forget_dim, bias=False, **f)
        self.i_proj = nn.Linear(d_model, d_model, bias=False, **f)
        self._init_convs({"q": forget_dim, "f": forget_dim, "i": d_model}, use_short_conv, conv_size, conv_bias)
        self.norm = RMSNorm(d_model, norm_eps, **f)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, **f)

    def _streams(self):
        return {"q": self.q_proj, "f": self.f_proj, "i": self.i_proj}

    def _qkvg(self, x, streams):
        q = F.silu(rearrange(streams["q"], "... (h d) -> ... h d", d=self.head_k_dim))
        g = F.logsigmoid(rearrange(streams["f"], "... (h d) -> ... h d", d=self.head_k_dim))
        k = -torch.expm1(g)  # 1 - f, the input gate tied to the forget gate
        v = rearrange(streams["i"], "... (h d) -> ... h d", d=self.head_v_dim)
        return q, k, v, g

    def _output(self, o, x):
        return self.out_proj(self.norm(rearrange(o, "... h d -> ... (h d)")))
