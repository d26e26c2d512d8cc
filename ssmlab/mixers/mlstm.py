"""The mLSTM layer of xLSTM (Beck et al., arXiv 2405.04517) on ``ssmlab.ops.mlstm``.

Follows NX-AI's ``xlstm/blocks/mlstm/layer.py`` (``mLSTMLayer``) and ``cell.py`` (``mLSTMCell``):
the input is projected up to two branches of width ``E = proj_factor D`` (rounded up to a
multiple of 64); one branch passes a causal depthwise convolution and SiLU that feed the queries
and keys (the values take the branch before the convolution), each through a block-diagonal
projection of blocks of ``qkv_proj_blocksize``; the input and forget gate pre-activations are
linear in the concatenation ``[q, k, v]``; the mLSTM's output is normalised per head (a group norm
without bias, weight ``1 + w``), a learnable per-channel multiple of the convolution's output is
added, the sum is gated by SiLU of the other branch, and projected down to D.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmlab.layers.conv import ShortConvolution
from ssmlab.layers.headwise import HeadwiseLinear
from ssmlab.mixers.base import Mixer, State, matrix_memory
from ssmlab.ops import mlstm, mlstm_step
from ssmlab.registry import register


@register("mixer", "mlstm", description="mLSTM: xLSTM's matrix-memory LSTM with exponential gating (NX-AI's layer)",
          paper="2405.04517")
class MLSTM(Mixer):
    """The mLSTM layer of xLSTM (arXiv 2405.04517), as NX-AI's ``mLSTMLayer``.

    Args (defaults as ``mLSTMLayerConfig``):
        d_model: width D.
        n_heads: heads H of the mLSTM cell (4); each has keys and values of E / H.
        proj_factor: the inner width E over D (2.0), rounded up to a multiple of
            ``round_to`` (64), as xlstm's ``round_proj_up_dim_up``.
        qkv_proj_blocksize: the block size of the block-diagonal q, k, v projections (4).
        conv_size: the causal convolution's kernel (4), with a bias.
        bias: biases in the up-, down- and q/k/v projections (False).
        norm_eps: epsilon of the per-head output norm (1e-5).
        eps: the mLSTM's denominator epsilon (1e-6).
        n_blocks: the number of blocks of the model, which scales the down-projection's
            initialisation (xlstm's ``_num_blocks``, 1).
        chunk_size, backend: of ``ssmlab.ops.mlstm`` (64, None).

    Initialisation as xlstm: up-projection and q/k/v N(0, 2 / (5 D)), down-projection
    N(0, 2 / n_blocks / sqrt(D)), forget-gate weight 0 and bias linspace(3, 6, H), input-gate
    weight 0 and bias N(0, 0.1), the norm's ``w`` 0 and the skip 1.

    Names: ``up_proj`` is xlstm's ``proj_up``, ``out_proj`` its ``proj_down``, ``conv`` its
    ``conv1d.conv``, ``igate``/``fgate``/``norm_weight`` its ``mlstm_cell.igate``/``.fgate``/
    ``.outnorm.weight``, ``skip`` its ``learnable_skip``. Dropout (0 in xlstm) is not provided.

    Conventions: the forward runs from the empty memory with ``m = -inf`` (see ``ssmlab.ops.mlstm``),
    which is what xlstm's ``forward`` (its parallel form) computes; xlstm's ``step`` starts from
    ``m = 0`` instead, which changes the outputs by the 1e-6 ``eps`` term only. Here ``step`` equals
    ``forward``.

    State: ``{"conv": (B, E, conv_size - 1), "memory": (B, H, E/H, E/H), "normalizer": (B, H, E/H),
    "stabilizer": (B, H)}``, the last three at least float32; the empty stabiliser is -inf.
    """

    causal = True

    def __init__(self, d_model: int, n_heads: int = 4, proj_factor: float = 2.0, *, round_to: int = 64,
                 qkv_proj_blocksize: int = 4, conv_size: int = 4, bias: bool = False, norm_eps: float = 1e-5,
                 eps: float = 1e-6, n_blocks: int = 1, chunk_size: int = 64, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        inner = int(math.ceil(proj_factor * d_model / round_to) * round_to)
        if n_heads < 1 or inner % n_heads or qkv_proj_blocksize < 1 or inner % qkv_proj_blocksize:
            raise ValueError(f"mlstm: the inner width {inner} must be a multiple of n_heads={n_heads} and of "
                             f"qkv_proj_blocksize={qkv_proj_blocksize}")
        if conv_size < 1:
            raise ValueError(f"mlstm: conv_size must be >= 1, got {conv_size}")
        self.inner, self.n_heads, self.head_dim = inner, n_heads, inner // n_heads
        self.norm_eps, self.eps, self.chunk_size, self.backend = norm_eps, eps, chunk_size, backend
        f = self.factory
        self.up_proj = nn.Linear(d_model, 2 * inner, bias=bias, **f)
        self.conv = ShortConvolution(inner, conv_size, bias=True, **f)
        blocks = inner // qkv_proj_blocksize
        self.q_proj = HeadwiseLinear(inner, blocks, bias=bias, **f)
        self.k_proj = HeadwiseLinear(inner, blocks, bias=bias, **f)
        self.v_proj = HeadwiseLinear(inner, blocks, bias=bias, **f)
        self.igate = nn.Linear(3 * inner, n_heads, **f)
        self.fgate = nn.Linear(3 * inner, n_heads, **f)
        self.norm_weight = nn.Parameter(torch.zeros(inner, **f))
        self.skip = nn.Parameter(torch.ones(inner, **f))
        self.out_proj = nn.Linear(inner, d_model, bias=bias, **f)
        with torch.no_grad():
            small = math.sqrt(2 / (5 * d_model))
            for weight in (self.up_proj.weight, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight):
                weight.normal_(std=small)
            self.out_proj.weight.normal_(std=2 / n_blocks / math.sqrt(d_model))
            for linear in (self.up_proj, self.out_proj, self.q_proj, self.k_proj, self.v_proj):
                if linear.bias is not None:
                    linear.bias.zero_()
            self.fgate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, n_heads))
            self.igate.weight.zero_()
            self.igate.bias.normal_(std=0.1)

    def _qkv_gates(self, x_mlstm, x_conv):
        """q, k (..., H, E/H) from the convolved branch, v from the branch itself, and the gates (..., H)."""
        q, k, v = self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_mlstm)
        gates_in = torch.cat([q, k, v], dim=-1)  # (..., 3E)
        q, k, v = (rearrange(t, "... (h d) -> ... h d", h=self.n_heads) for t in (q, k, v))
        return q, k, v, self.igate(gates_in), self.fgate(gates_in)

    def _output(self, h, x_conv, z):
        """Per-head norm of the mLSTM's output h (..., H, E/H), skip, output gate, down-projection."""
        h = F.layer_norm(h, (self.head_dim,), eps=self.norm_eps)
        h = rearrange(h, "... h d -> ... (h d)") * (1 + self.norm_weight)
        return self.out_proj((h + self.skip * x_conv) * F.silu(z))

    def _forward(self, x, state, return_state):
        x_mlstm, z = self.up_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        x_conv, conv_state = self.conv(x_mlstm, None if state is None else state["conv"], return_state=True)
        x_conv = F.silu(x_conv)
        q, k, v, i, f = self._qkv_gates(x_mlstm, x_conv)
        memory = None if state is None else (state["memory"], state["normalizer"], state["stabilizer"])
        h, (C, n, m) = mlstm(q, k, v, i, f, eps=self.eps, initial_state=memory, return_final_state=True,
                             chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(h.to(x.dtype), x_conv, z)
        return y, ({"conv": conv_state, "memory": C, "normalizer": n, "stabilizer": m} if return_state else None)

    def _step(self, x_t, state):
        x_mlstm, z = self.up_proj(x_t).chunk(2, dim=-1)  # (B, E) each
        x_conv, conv_state = self.conv.step(x_mlstm, state["conv"])
        x_conv = F.silu(x_conv)
        q, k, v, i, f = self._qkv_gates(x_mlstm, x_conv)
        h, (C, n, m) = mlstm_step(q, k, v, i, f, (state["memory"], state["normalizer"], state["stabilizer"]),
                                  eps=self.eps)
        y = self._output(h.to(x_t.dtype), x_conv, z)
        return y, {"conv": conv_state, "memory": C, "normalizer": n, "stabilizer": m}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        memory = matrix_memory(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype)
        return {"conv": self.conv.init_state(batch_size, device=device, dtype=dtype), "memory": memory,
                "normalizer": memory.new_zeros(batch_size, self.n_heads, self.head_dim),
                "stabilizer": memory.new_full((batch_size, self.n_heads), float("-inf"))}
