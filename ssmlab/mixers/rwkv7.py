"""RWKV-7 "Goose" time mixing (Peng et al., arXiv 2503.14456) on ``ssmlab.ops.rwkv7``.

The layer follows the official code (BlinkDL/RWKV-LM, ``RWKV-v7``: ``RWKV_Tmix_x070`` of
``rwkv_v7_demo.py`` and ``train_temp/src/model.py``) and flash-linear-attention's
``RWKV7Attention`` (``fla/layers/rwkv7.py``), which computes the same function. On the input
``x`` (..., D) and the previous position's input ``x_prev`` (zeros before the first)::

    x_c = x + (x_prev - x) * mu_c                    for c in r, w, k, v, a, g (token shift)
    r, k, v = W_r x_r, W_k x_k, W_v x_v
    log w   = -exp(-1/2) sigmoid(w0 + tanh(x_w W1) W2)     (the official exp(-exp(w)), w soft-clamped
                                                          to (-inf, -1/2), is this decay)
    iclr    = sigmoid(a0 + x_a A1 A2)                      (in-context learning rate)
    g       = sigmoid(x_g G1) G2                           (output gate)
    kappa_hat = L2-normalise(k * k_k) per head            (the removal key)
    k       = k * (1 + (iclr - 1) * k_a)
    o       = rwkv7(r, k, v, log w, a=-kappa_hat, b=kappa_hat * iclr)    per head, scale 1
    y       = W_o ((GroupNorm_H(o) + ((r * k * r_k).sum per head) v) * g)

Value residual: from its second layer on, the official model mixes each layer's v with the
first layer's, ``v <- lerp(v, v_first, sigmoid(v0 + x_v V1 V2))``. That is a link between layers,
which the one-mixer-per-layer contract has no channel for: this mixer computes every layer as
the official first layer does (no ``v0, V1, V2``, its own v), whatever ``layer_id`` is.
The channel mixing (RWKV-7's squared-ReLU FFN) is the block's MLP, not part of the mixer;
use the backbone's MLP for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.mixers.base import LengthsInForward, Mixer, State, matrix_memory, padding_mask
from ssmlab.ops import rwkv7, rwkv7_step
from ssmlab.registry import register

# The official soft clamp of the decay: exp(-exp(w)) with w <= -1/2 is a log decay of at least -exp(-1/2).
DECAY_BOUND = math.exp(-0.5)
MIX_EXPONENTS = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


def lora_rank(d_model: int, factor: float) -> int:
    """The official suggestion for a LoRA rank: ``max(32, round(factor sqrt(D) / 32) * 32)``."""
    return max(32, int(round(factor * d_model ** 0.5 / 32) * 32))


def _lora(d_model: int, rank: int, activation: nn.Module, bias: bool, factory: dict) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, rank, bias=False, **factory), activation,
                         nn.Linear(rank, d_model, bias=bias, **factory))


@register("mixer", "rwkv7", description="RWKV-7 Goose time mixing: generalised delta rule with vector decay "
          "and in-context learning rate", paper="2503.14456")
class RWKV7(LengthsInForward, Mixer):
    """RWKV-7 time mixing (arXiv 2503.14456), as the official ``RWKV_Tmix_x070`` computes its first layer
    (see the module docstring for the computation and the value residual).

    Args:
        d_model: width D (the official ``n_embd``; the key and value widths are D too).
        head_dim: size K = V of each head (64, the official and fla's, or D when D < 64); the number
            of heads is ``D // head_dim``.
        n_heads: used instead of ``head_dim`` when given: ``head_dim = D // n_heads``.
        decay_low_rank_dim, a_low_rank_dim, gate_low_rank_dim: ranks of the LoRA projections of the
            decay, the in-context learning rate and the output gate (None: the official rules,
            ``max(32, round(c sqrt(D) / 32) * 32)`` with c = 2.5, 2.5 and 5: 64, 64, 128 at D = 768;
            fla's layer multiplies c by ``head_dim / 64`` for the first two, the same at K = 64).
        layer_id, n_layers: the position of the layer in the stack (0 and 1), used only by the
            initialisation, as in the official ``train_temp`` code (``ratio_0_to_1 = layer_id /
            (n_layers - 1)``, ``ratio_1_to_almost0 = 1 - layer_id / n_layers``): the token-shift
            mixes ``mu_c = 1 - (d / D) ^ (e_c ratio_1_to_almost0)`` (e = 0.2, 0.9, 0.7, 0.7, 0.9, 0.2
            for r, w, k, v, a, g), ``w0`` from -6 + 6 (d / (D - 1)) ^ (1 + ratio_0_to_1 ^ 0.3) plus a
            zigzag over each head, ``a0``, ``k_k = 0.71 - 0.1 linear``, ``k_a = 1.02``, ``r_k = -0.04``,
            the LoRA down-projections at zero and up-projections orthogonal with gain 0.1 (times
            ``sqrt(rank / D)`` when the rank exceeds D),
            W_r, W_v uniform in +-0.5 / sqrt(D), W_k in +-0.05 / sqrt(D), and the GroupNorm weight
            ``((layer_id + 1) / n_layers) ^ 0.7``.
        norm_eps: the GroupNorm epsilon is ``head_dim * norm_eps`` (1e-5: 64e-5 at K = 64, as the
            official ``ln_x``).
        chunk_size, backend: of ``ssmlab.ops.rwkv7`` (64, None).

    Kept differently from the official code: the output projection ``out_proj`` (the official
    ``output``, fla's ``o_proj``) has PyTorch's default initialisation, not zeros, so that a
    freshly built layer is not the zero function (the official model starts every layer's
    contribution to the residual stream at zero). The parameters keep fla's names: ``x_r`` ...
    ``x_g`` (official the same), ``r_proj``, ``k_proj``, ``v_proj`` (official ``receptance``,
    ``key``, ``value``), ``w_lora``, ``a_lora``, ``g_lora`` (``Sequential(Linear, activation,
    Linear)``: official ``w1`` is ``w_lora[0].weight`` transposed, ``w2`` is ``w_lora[2].weight``
    transposed, ``w0`` is ``w_lora[2].bias``; the same for ``a``, and ``g`` has no bias),
    ``k_k``, ``k_a``, ``r_k`` and ``g_norm`` (official ``ln_x``); the mixes and ``k_k``, ``k_a`` are
    (D,), not (1, 1, D). Not provided: fla's ``value_dim`` other than D and its ``fuse_norm``
    variant (the same function through its Triton GroupNorm).

    State: ``{"shift": (B, D), the previous position's input, in the activations' dtype;
    "memory": (B, H, K, V), the matrix memory with keys first (the transpose of the official
    (V, K) state), float32 at least}``.
    """

    causal = True

    def __init__(self, d_model: int, head_dim: int | None = None, n_heads: int | None = None, *,
                 decay_low_rank_dim: int | None = None, a_low_rank_dim: int | None = None,
                 gate_low_rank_dim: int | None = None, layer_id: int = 0, n_layers: int = 1, norm_eps: float = 1e-5,
                 chunk_size: int = 64, backend: str | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if n_heads is not None:
            if n_heads < 1 or d_model % n_heads:
                raise ValueError(f"rwkv7: d_model={d_model} must be a positive multiple of n_heads={n_heads}")
            head_dim = d_model // n_heads
        if head_dim is None:
            head_dim = min(64, d_model)
        if head_dim < 1 or d_model % head_dim:
            raise ValueError(f"rwkv7: d_model={d_model} must be a positive multiple of head_dim={head_dim}")
        if not (isinstance(layer_id, int) and isinstance(n_layers, int) and 0 <= layer_id < n_layers):
            raise ValueError(f"rwkv7: need 0 <= layer_id < n_layers, got layer_id={layer_id}, n_layers={n_layers}")
        self.head_dim, self.n_heads = head_dim, d_model // head_dim
        self.layer_id, self.n_layers = layer_id, n_layers
        self.chunk_size, self.backend = chunk_size, backend
        ranks = {"w": decay_low_rank_dim or lora_rank(d_model, 2.5), "a": a_low_rank_dim or lora_rank(d_model, 2.5),
                 "g": gate_low_rank_dim or lora_rank(d_model, 5.0)}
        f, d = self.factory, d_model
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (nn.Parameter(torch.empty(d, **f))
                                                                      for _ in range(6))
        self.k_k = nn.Parameter(torch.empty(d, **f))
        self.k_a = nn.Parameter(torch.empty(d, **f))
        self.r_k = nn.Parameter(torch.empty(self.n_heads, head_dim, **f))
        self.r_proj = nn.Linear(d, d, bias=False, **f)
        self.k_proj = nn.Linear(d, d, bias=False, **f)
        self.v_proj = nn.Linear(d, d, bias=False, **f)
        self.w_lora = _lora(d, ranks["w"], nn.Tanh(), True, f)
        self.a_lora = _lora(d, ranks["a"], nn.Identity(), True, f)
        self.g_lora = _lora(d, ranks["g"], nn.Sigmoid(), False, f)
        self.g_norm = nn.GroupNorm(self.n_heads, d, eps=head_dim * norm_eps, **f)
        self.out_proj = nn.Linear(d, d, bias=False, **f)
        self._initialise()

    @torch.no_grad()
    def _initialise(self):
        """The official ``train_temp`` initialisation (see the class docstring), computed in float64."""
        d, n = self.d_model, self.head_dim
        ratio_0_to_1 = self.layer_id / max(self.n_layers - 1, 1)
        ratio_1_to_almost0 = 1.0 - self.layer_id / self.n_layers
        index = torch.arange(d, dtype=torch.float64)
        ddd = index / d
        linear = index / max(d - 1, 1) - 0.5
        zigzag = ((index % n) - (n - 1) / 2) / max((n - 1) / 2, 1.0)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (index / max(d - 1, 1)) ** (1 + ratio_0_to_1 ** 0.3)
        for name, exponent in MIX_EXPONENTS.items():
            getattr(self, f"x_{name}").copy_(1.0 - ddd ** (exponent * ratio_1_to_almost0))
        self.k_k.copy_(0.71 - 0.1 * linear)
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        for lora in (self.w_lora, self.a_lora, self.g_lora):
            nn.init.zeros_(lora[0].weight)
            rank = lora[0].out_features
            up = torch.empty(rank, d, dtype=torch.float64)  # the official (rank, D) matrix
            gain = 0.1 * (math.sqrt(rank / d) if rank > d else 1.0)
            lora[2].weight.copy_(nn.init.orthogonal_(up, gain=gain).T)
        self.w_lora[2].bias.copy_(www + 0.5 + 2.5 * zigzag)
        self.a_lora[2].bias.copy_(-0.19 + 0.3 * zigzag + 0.4 * linear)
        bound = d ** -0.5
        nn.init.uniform_(self.r_proj.weight, -0.5 * bound, 0.5 * bound)
        nn.init.uniform_(self.k_proj.weight, -0.05 * bound, 0.05 * bound)
        nn.init.uniform_(self.v_proj.weight, -0.5 * bound, 0.5 * bound)
        self.g_norm.weight.fill_(((self.layer_id + 1) / self.n_layers) ** 0.7)

    def _inputs(self, x, x_prev):
        """The op's inputs from x and the previous inputs x_prev, both (..., D): r, k, log_decay, a, b
        (..., H, K), v (..., H, V), and the output gate g (..., D)."""
        delta = x_prev - x
        xr, xw, xk, xv, xa, xg = (x + delta * getattr(self, f"x_{name}") for name in MIX_EXPONENTS)
        heads = lambda t: rearrange(t, "... (h d) -> ... h d", d=self.head_dim)  # noqa: E731
        r, k, v = heads(self.r_proj(xr)), heads(self.k_proj(xk)), heads(self.v_proj(xv))
        log_decay = -DECAY_BOUND * torch.sigmoid(heads(self.w_lora(xw)))
        iclr = torch.sigmoid(heads(self.a_lora(xa)))
        g = self.g_lora(xg)
        kappa = F.normalize(k * heads(self.k_k), dim=-1)
        k = k * (1 + (iclr - 1) * heads(self.k_a))
        return r, k, v, log_decay, -kappa, kappa * iclr, g

    def _output(self, o, r, k, v, g):
        """GroupNorm per head, the bonus ``((r * k * r_k).sum) v`` of the current position, gate, projection."""
        shape = o.shape[:-2] + (self.d_model,)
        normed = self.g_norm(o.reshape(-1, self.d_model)).view(shape)  # (..., D)
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v  # (..., H, V)
        return self.out_proj((normed + rearrange(bonus, "... h d -> ... (h d)")) * g)

    def _forward(self, x, state, return_state, lengths=None):
        batch, length, _ = x.shape
        shift = x.new_zeros(batch, self.d_model) if state is None else state["shift"].to(x.dtype)
        x_prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)  # (B, L, D)
        r, k, v, log_decay, a, b, g = self._inputs(x, x_prev)
        if lengths is None:
            last = x[:, -1]
        else:
            # k = b = 0 and no decay at padded positions leave the memory as it was; the shift keeps the last
            # real input (the entering one for an empty row).
            real = padding_mask(lengths, length)[..., None, None]  # (B, L, 1, 1)
            k, b, log_decay = k * real, b * real, log_decay * real
            last = torch.cat([shift[:, None], x], dim=1)[torch.arange(batch, device=x.device), lengths]
        o, memory = rwkv7(r, k, v, log_decay, a, b, initial_state=None if state is None else state["memory"],
                          return_final_state=True, chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(o.to(x.dtype), r, k, v, g)
        return y, ({"shift": last, "memory": memory} if return_state else None)

    def _step(self, x_t, state):
        r, k, v, log_decay, a, b, g = self._inputs(x_t, state["shift"].to(x_t.dtype))
        o, memory = rwkv7_step(r, k, v, log_decay, a, b, state["memory"])
        return self._output(o.to(x_t.dtype), r, k, v, g), {"shift": x_t, "memory": memory}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
                "memory": matrix_memory(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device,
                                        dtype=dtype)}
