"""DeltaNet (arXiv 2406.06484) and Gated DeltaNet (arXiv 2412.06464): linear attention with the delta rule.

Both layers follow flash-linear-attention's ``fla/layers/delta_net.py`` and
``fla/layers/gated_deltanet.py``: q, k and v projections, each through a short causal
convolution with SiLU; q and k L2-normalised per head (eps 1e-6, as fla's kernels);
a writing strength ``beta = sigmoid(b_proj(x))`` per head; the recurrence of
``ssmlab.ops.gated_delta_rule`` with state (B, H, K, V) and scale ``K ** -0.5``;
a per-head RMSNorm of the output, gated by ``silu(g_proj(x))`` when ``use_gate``
(fla's ``FusedRMSNormGated``: normalise, scale, then multiply by the gate); ``out_proj``
(fla's ``o_proj``; the other parameters keep fla's names).
Gated DeltaNet adds the forget gate of Mamba-2,
``alpha = exp(-exp(A_log) * softplus(a_proj(x) + dt_bias))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import ShortConvolution
from ssmlab.layers.norm import RMSNorm
from ssmlab.mixers.base import LengthsInForward, Mixer, padding_mask, State, ssm_dtype, ssm_parameter
from ssmlab.ops import gated_delta_rule, gated_delta_rule_step
from ssmlab.ops.discretize import init_dt_bias
from ssmlab.registry import register


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dimension, as flash-linear-attention's ``l2norm``."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


class _DeltaRule(LengthsInForward, Mixer):
    """The layer shared by DeltaNet and Gated DeltaNet; subclasses build the projections' sizes and the gates.

    State: ``{"conv_q": (B, H*K, w - 1), "conv_k": (B, H*K, w - 1), "conv_v": (B, H*V, w - 1),
    "memory": (B, H, K, V)}``, the memory in float32 at least.
    """

    causal = True

    def _build(self, num_heads: int, head_k_dim: int, head_v_dim: int, *, use_gate: bool, conv_size: int,
               conv_bias: bool, norm_eps: float, allow_neg_eigval: bool, chunk_size: int, backend: str | None):
        if conv_size < 1:
            raise ValueError(f"{self.registry_name}: conv_size must be >= 1, got {conv_size}")
        if head_k_dim < 1 or head_v_dim < 1:
            raise ValueError(f"{self.registry_name}: head sizes must be >= 1, got K={head_k_dim}, V={head_v_dim}")
        self.num_heads, self.head_k_dim, self.head_v_dim = num_heads, head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_heads * head_k_dim, num_heads * head_v_dim
        self.use_gate, self.allow_neg_eigval = use_gate, allow_neg_eigval
        self.chunk_size, self.backend = chunk_size, backend
        d, f = self.d_model, self.factory
        self.q_proj = nn.Linear(d, self.key_dim, bias=False, **f)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False, **f)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False, **f)
        self.b_proj = nn.Linear(d, num_heads, bias=False, **f)
        self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, **f)
        self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, **f)
        self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, **f)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False, **f) if use_gate else None
        self.o_norm = RMSNorm(head_v_dim, norm_eps, **f)
        self.out_proj = nn.Linear(self.value_dim, d, bias=False, **f)

    def _log_alpha(self, x: torch.Tensor) -> torch.Tensor | None:
        """(..., H) log forget gate, or None for alpha = 1."""
        return None

    def _inputs(self, x, state, lengths=None, step=False):
        """Projections, convolutions and gates: q, k (..., H, K), v (..., H, V), beta, log_alpha (..., H)."""
        convs = {}
        streams = []
        for name, proj, conv in (("conv_q", self.q_proj, self.q_conv1d), ("conv_k", self.k_proj, self.k_conv1d),
                                 ("conv_v", self.v_proj, self.v_conv1d)):
            if step:
                u, convs[name] = conv.step(proj(x), state[name])
            else:
                u, convs[name] = conv(proj(x), None if state is None else state[name], return_state=True,
                                      lengths=lengths)
            streams.append(F.silu(u))
        q, k = (l2_normalize(rearrange(u, "... (h d) -> ... h d", d=self.head_k_dim)) for u in streams[:2])
        v = rearrange(streams[2], "... (h d) -> ... h d", d=self.head_v_dim)
        beta = torch.sigmoid(self.b_proj(x))  # (..., H)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        log_alpha = self._log_alpha(x)
        if lengths is not None:
            # beta = 0 and alpha = 1 at padded positions leave the memory as it was.
            real = padding_mask(lengths, x.shape[1])[..., None]  # (B, L, 1)
            beta = beta * real
            if log_alpha is not None:
                log_alpha = log_alpha * real
        return q, k, v, beta, log_alpha, convs

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.o_norm(o)  # (..., H, V)
        if self.g_proj is not None:
            g = rearrange(self.g_proj(x), "... (h d) -> ... h d", d=self.head_v_dim)
            o = o * F.silu(g)
        return self.out_proj(rearrange(o, "... h d -> ... (h d)"))

    def _forward(self, x, state, return_state, lengths=None):
        q, k, v, beta, log_alpha, convs = self._inputs(x, state, lengths)
        o, memory = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha,
                                     initial_state=None if state is None else state["memory"],
                                     return_final_state=True, chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(o.to(x.dtype), x)
        return y, ({**convs, "memory": memory} if return_state else None)

    def _step(self, x_t, state):
        q, k, v, beta, log_alpha, convs = self._inputs(x_t, state, step=True)
        o, memory = gated_delta_rule_step(q, k, v, beta, state["memory"], log_alpha=log_alpha)
        return self._output(o.to(x_t.dtype), x_t), {**convs, "memory": memory}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        state = {name: conv.init_state(batch_size, device=device, dtype=dtype)
                 for name, conv in (("conv_q", self.q_conv1d), ("conv_k", self.k_conv1d), ("conv_v", self.v_conv1d))}
        state["memory"] = torch.zeros(batch_size, self.num_heads, self.head_k_dim, self.head_v_dim, device=device,
                                      dtype=torch.promote_types(dtype, torch.float32))
        return state


@register("mixer", "deltanet", description="DeltaNet: linear attention with the delta rule (fla's layer)",
          paper="2406.06484")
class DeltaNet(_DeltaRule):
    """DeltaNet (Yang et al., arXiv 2406.06484), as flash-linear-attention's ``DeltaNet`` layer.

    Args (defaults as fla's):
        d_model: width D.
        num_heads: heads H (4); K = expand_k * D / H and V = expand_v * D / H.
        expand_k, expand_v: key and value widths over D (1.0, 1.0).
        use_gate: output gate ``silu(g_proj(x))`` after the per-head RMSNorm (False).
        conv_size: width of the short convolutions on q, k, v (4); conv_bias (False).
        allow_neg_eigval: ``beta = 2 sigmoid(...)`` (arXiv 2411.12537) (False).
        norm_eps: epsilon of the output RMSNorm (1e-5).
        chunk_size, backend: of ``ssmlab.ops.gated_delta_rule`` (64, None).

    Kept from fla's defaults only: ``qk_activation="silu"``, ``qk_norm="l2"``, ``use_beta=True``,
    ``use_short_conv=True``. fla keeps the ungated output norm's weight in float32; here it has the
    factory dtype.

    State: ``{"conv_q", "conv_k": (B, H*K, conv_size - 1), "conv_v": (B, H*V, conv_size - 1),
    "memory": (B, H, K, V)}``.
    """

    def __init__(self, d_model: int, num_heads: int = 4, expand_k: float = 1.0, expand_v: float = 1.0, *,
                 use_gate: bool = False, conv_size: int = 4, conv_bias: bool = False, allow_neg_eigval: bool = False,
                 norm_eps: float = 1e-5, chunk_size: int = 64, backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if num_heads < 1 or key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"deltanet: key width {key_dim} and value width {value_dim} must be divisible by "
                             f"num_heads={num_heads}")
        self._build(num_heads, key_dim // num_heads, value_dim // num_heads, use_gate=use_gate, conv_size=conv_size,
                    conv_bias=conv_bias, norm_eps=norm_eps, allow_neg_eigval=allow_neg_eigval,
                    chunk_size=chunk_size, backend=backend)


@register("mixer", "gated-deltanet", description="Gated DeltaNet: delta rule with a Mamba-2 forget gate (fla's layer)",
          paper="2412.06464")
class GatedDeltaNet(_DeltaRule):
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464), as flash-linear-attention's
    ``GatedDeltaNet`` layer.

    Args (defaults as fla's, whose head sizes at ``hidden_size=2048`` are 6 heads of 256):
        d_model: width D.
        num_heads: heads H (6).
        head_dim: key size K per head (None: ``0.75 * D / H`` rounded down, 256 at D = 2048, fla's
            rule ``H * K = 0.75 D``).
        expand_v: value size V = expand_v * K per head (2.0).
        use_gate: output gate ``silu(g_proj(x))`` after the per-head RMSNorm (True).
        conv_size (4), conv_bias (False), allow_neg_eigval (False), norm_eps (1e-5): as DeltaNet.
        A_init_range: ``A = exp(A_log)`` uniform in this range (0, 16), as fla.
        dt_min, dt_max, dt_init_floor: ``softplus(dt_bias)`` log-uniform in [0.001, 0.1], floor 1e-4.
        lr: learning rate for A_log and dt_bias (None: the trainer's; no weight decay, as fla).
        chunk_size, backend: of ``ssmlab.ops.gated_delta_rule`` (64, None).

    The forget gate is ``alpha = exp(-exp(A_log) * softplus(a_proj(x) + dt_bias))`` per head and
    position. Not provided: fla's ``num_v_heads`` (grouped value heads) and ``use_short_conv=False``.
    fla keeps the ungated output norm's weight in float32; here it has the factory dtype.

    State: as DeltaNet's.
    """

    def __init__(self, d_model: int, num_heads: int = 6, head_dim: int | None = None, expand_v: float = 2.0, *,
                 use_gate: bool = True, conv_size: int = 4, conv_bias: bool = False, allow_neg_eigval: bool = False,
                 norm_eps: float = 1e-5, A_init_range: tuple[float, float] = (0.0, 16.0), dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, lr: float | None = None, chunk_size: int = 64,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if num_heads < 1:
            raise ValueError(f"gated-deltanet: num_heads must be >= 1, got {num_heads}")
        head_dim = int(0.75 * d_model) // num_heads if head_dim is None else head_dim
        head_v_dim = int(head_dim * expand_v)
        if head_v_dim != head_dim * expand_v:
            raise ValueError(f"gated-deltanet: expand_v={expand_v} times head_dim={head_dim} must be an integer")
        if not 0 <= A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"gated-deltanet: A_init_range must be non-negative and ordered, got {A_init_range}")
        self._build(num_heads, head_dim, head_v_dim, use_gate=use_gate, conv_size=conv_size, conv_bias=conv_bias,
                    norm_eps=norm_eps, allow_neg_eigval=allow_neg_eigval, chunk_size=chunk_size, backend=backend)
        self.a_proj = nn.Linear(d_model, num_heads, bias=False, **self.factory)
        a = torch.empty(num_heads, device=device, dtype=torch.float64).uniform_(*A_init_range)
        self.A_log = ssm_parameter(torch.log(a), self.factory["dtype"], lr=lr)
        self.dt_bias = ssm_parameter(init_dt_bias(num_heads, dt_min, dt_max, dt_init_floor, device=device,
                                                  dtype=ssm_dtype(dtype)), dtype, lr=lr)

    def _log_alpha(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a_proj(x)  # (..., H)
        dt = F.softplus(a.to(self.dt_bias.dtype) + self.dt_bias)
        return -torch.exp(self.A_log) * dt
