"""The short causal convolution as Triton kernels, forward and backward.

One program per (batch, block of ``BLOCK_L`` positions, block of ``BLOCK_D`` channels) of the
(B, L, D) layout, channels contiguous: the K taps are K shifted loads of the (BLOCK_L, BLOCK_D) tile
of x (positions before 0 read from the state), accumulated in float32 (float64 for float64 inputs).

The backward pass reads dy at the K positions each input reaches and, with the SiLU, the pre-activation
there, which the forward pass stores (in x's dtype) when a gradient is needed:
``dx[t] = sum_s weight[K - 1 - s] dpre[t + s]``. Recomputing it instead took K^2 shifted loads and
more registers than an sm_90 thread has (ptxas: 255 and a 400-byte spill). The programs whose
positions fall before 0 write the initial state's gradient, and the final state's gradient is added
where the last K - 1 inputs are. A backward program walks 256 positions and writes one partial sum of the
weight's and the bias's gradients, summed in torch, so the result does not depend on scheduling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmlab.ops.causal_conv.reference import compute_dtype


@triton.jit
def _load_x(x_ptr, h0_ptr, pos, d, d_ok, L, DIM, HAS_H0: tl.constexpr, K: tl.constexpr):
    """One batch's x at positions ``pos`` (BLOCK_L,) and channels ``d`` (BLOCK_D,); positions -(K-1)..-1
    are the state, laid out as x, (K - 1, D): one load from either."""
    off = pos[:, None] * DIM + d[None, :]
    if HAS_H0:
        ptr = tl.where((pos >= 0)[:, None], x_ptr + off, h0_ptr + (off + (K - 1) * DIM))
        return tl.load(ptr, mask=((pos >= 1 - K) & (pos < L))[:, None] & d_ok[None, :], other=0.0)
    return tl.load(x_ptr + off, mask=((pos >= 0) & (pos < L))[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _pre_activation(x_ptr, w_ptr, b_ptr, h0_ptr, pos, d, d_ok, L, DIM,
                    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr,
                    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(ACC)[None, :]
    for j in tl.static_range(K):
        w = tl.load(w_ptr + d * K + j, mask=d_ok, other=0.0).to(ACC)
        acc += w[None, :] * _load_x(x_ptr, h0_ptr, pos + (j - (K - 1)), d, d_ok, L, DIM, HAS_H0, K).to(ACC)
    return acc


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, h0_ptr, y_ptr, pre_ptr, L, DIM,
                HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr, SAVE_PRE: tl.constexpr,
                ACC: tl.constexpr,
                K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # offsets past 2^31 elements at large B L D
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    # The batch's offsets once, as 64-bit scalars; the offsets within a batch are 32-bit tiles.
    x_ptr += pid_b * L * DIM
    y_ptr += pid_b * L * DIM
    if HAS_H0:
        h0_ptr += pid_b * (K - 1) * DIM
    y = _pre_activation(x_ptr, w_ptr, b_ptr, h0_ptr, pos, d, d_ok, L, DIM, HAS_BIAS, HAS_H0, ACC, K, BLOCK_L,
                        BLOCK_D)
    tile = pos[:, None] * DIM + d[None, :]
    ok = (pos < L)[:, None] & d_ok[None, :]
    if SILU:
        if SAVE_PRE:
            tl.store(pre_ptr + pid_b * L * DIM + tile, y.to(pre_ptr.dtype.element_ty), mask=ok)
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + tile, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_kernel(x_ptr, pre_ptr, w_ptr, h0_ptr, dy_ptr, dhT_ptr, dx_ptr, dh0_ptr, dw_ptr, db_ptr, L, DIM, START,
                BLOCKS_PER_PROGRAM, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
                SILU: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
                BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # offsets past 2^31 elements at large B L D
    pid_l = tl.program_id(1)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    taps = tl.arange(0, K_PAD)
    x_ptr += pid_b * L * DIM
    dy_ptr += pid_b * L * DIM
    dx_ptr += pid_b * L * DIM
    if SILU:
        pre_ptr += pid_b * L * DIM
    if HAS_H0:
        h0_ptr += pid_b * (K - 1) * DIM
        dh0_ptr += pid_b * (K - 1) * DIM
    if HAS_DHT:
        dhT_ptr += pid_b * (K - 1) * DIM
    grad_w = tl.zeros([BLOCK_D, K_PAD], dtype=ACC)
    grad_b = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(BLOCKS_PER_PROGRAM):
        # Positions from -(K - 1) with an initial state, whose gradient the first block writes.
        pos = START + (pid_l * BLOCKS_PER_PROGRAM + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC)
        for s in tl.static_range(K):
            q = pos + s  # the outputs that input ``pos`` reaches through tap K - 1 - s
            q_ok = (q >= 0) & (q < L)
            g = tl.load(dy_ptr + q[:, None] * DIM + d[None, :], mask=q_ok[:, None] & d_ok[None, :],
                        other=0.0).to(ACC)
            if SILU:
                pre = tl.load(pre_ptr + q[:, None] * DIM + d[None, :], mask=q_ok[:, None] & d_ok[None, :],
                              other=0.0).to(ACC)
                sig = tl.sigmoid(pre)
                g = g * sig * (1.0 + pre * (1.0 - sig))
            w = tl.load(w_ptr + d * K + (K - 1 - s), mask=d_ok, other=0.0).to(ACC)
            dx += w[None, :] * g
            if s == 0:
                grad_b += tl.sum(g, axis=0)
                for j in tl.static_range(K):
                    xj = _load_x(x_ptr, h0_ptr, pos + (j - (K - 1)), d, d_ok, L, DIM, HAS_H0, K).to(ACC)
                    grad_w += tl.where(taps[None, :] == j, tl.sum(g * xj, axis=0)[:, None], 0.0)
        if HAS_DHT:
            # The final state is inputs L - (K - 1) .. L - 1 (some of them the initial state's when L < K - 1).
            idx = pos - (L - (K - 1))
            ok = (idx >= 0) & (pos < L) & (pos >= 1 - K)
            dx += tl.load(dhT_ptr + idx[:, None] * DIM + d[None, :], mask=ok[:, None] & d_ok[None, :],
                          other=0.0).to(ACC)
        tl.store(dx_ptr + pos[:, None] * DIM + d[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=((pos >= 0) & (pos < L))[:, None] & d_ok[None, :])
        if HAS_H0:
            tl.store(dh0_ptr + (pos[:, None] + K - 1) * DIM + d[None, :], dx,
                     mask=((pos < 0) & (pos >= 1 - K))[:, None] & d_ok[None, :])
    part = (pid_b * tl.num_programs(1) + pid_l) * DIM + d  # this program's row of the partial sums
    tl.store(dw_ptr + part[:, None] * K + taps[None, :], grad_w, mask=d_ok[:, None] & (taps < K)[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part, grad_b, mask=d_ok)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


FWD_BLOCK_L, FWD_BLOCK_D, FWD_WARPS = 32, 128, 8  # ptxas for sm_90: 95 registers, no spill (bf16, K=4)
BWD_BLOCK_L, BWD_BLOCK_D, BWD_WARPS = 16, 128, 8  # 149 registers, no spill
BWD_POSITIONS = 256  # positions per backward program, one partial sum of dweight and dbias each


def _block(size: int, most: int) -> int:
    return min(most, triton.next_power_of_2(size))


class _CausalConvTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, activation, needs_grad):
        batch, length, channels = x.shape
        width = weight.shape[1]
        dtype = compute_dtype(x.dtype)
        x_ = x.contiguous()
        w_ = weight.to(dtype).contiguous()
        b_ = None if bias is None else bias.to(dtype).contiguous()
        # The state as (B, K - 1, D), laid out as x (a copy of B (K - 1) D numbers).
        h0 = None if initial_state is None or width == 1 else initial_state.to(x.dtype).transpose(1, 2).contiguous()
        y = torch.empty_like(x_)
        save_pre = activation == "silu" and needs_grad
        pre = torch.empty_like(x_) if save_pre else None
        block_l, block_d = _block(length, FWD_BLOCK_L), _block(channels, FWD_BLOCK_D)
        grid = (batch, triton.cdiv(length, block_l), triton.cdiv(channels, block_d))
        _fwd_kernel[grid](x_, w_, b_, h0, y, pre, length, channels, HAS_BIAS=b_ is not None,
                          HAS_H0=h0 is not None, SILU=activation == "silu", SAVE_PRE=save_pre,
                          ACC=_tl_dtype(dtype), K=width, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=FWD_WARPS)
        # The final state: the last K - 1 inputs of the state followed by x, (B, D, K - 1).
        tail = x_[:, max(0, length - (width - 1)):].transpose(1, 2)
        if length < width - 1:
            before = x_.new_zeros(batch, channels, width - 1) if h0 is None else h0.transpose(1, 2)
            tail = torch.cat([before[..., length:], tail], dim=-1)
        ctx.set_materialize_grads(False)
        ctx.activation = activation
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype,
                      None if initial_state is None else initial_state.dtype)
        ctx.save_for_backward(x_, pre, w_, h0)
        return y, tail.contiguous()

    @staticmethod
    def backward(ctx, grad_y, grad_state):
        x, pre, w, h0 = ctx.saved_tensors
        w_dtype, b_dtype, h0_dtype = ctx.dtypes
        batch, length, channels = x.shape
        width = w.shape[1]
        dtype = compute_dtype(x.dtype)
        dy = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
        dhT = None if grad_state is None or width == 1 else grad_state.transpose(1, 2).contiguous()  # (B, K - 1, D)
        start = -(width - 1) if h0 is not None else 0
        block_l, block_d = _block(length - start, BWD_BLOCK_L), _block(channels, BWD_BLOCK_D)
        n_blocks = triton.cdiv(length - start, block_l)
        per_program = min(n_blocks, max(1, BWD_POSITIONS // block_l))
        n_l = triton.cdiv(n_blocks, per_program)
        dx = torch.empty_like(x)
        dh0 = None if h0 is None else x.new_empty(batch, width - 1, channels, dtype=dtype)
        part_w = x.new_empty(batch * n_l, channels, width, dtype=dtype)
        has_bias = b_dtype is not None
        part_b = x.new_empty(batch * n_l, channels, dtype=dtype) if has_bias else None
        _bwd_kernel[(batch, n_l, triton.cdiv(channels, block_d))](
            x, pre, w, h0, dy, dhT, dx, dh0, part_w, part_b, length, channels, start, per_program,
            HAS_BIAS=has_bias, HAS_H0=h0 is not None, HAS_DHT=dhT is not None, SILU=ctx.activation == "silu",
            ACC=_tl_dtype(dtype), K=width, K_PAD=triton.next_power_of_2(width), BLOCK_L=block_l, BLOCK_D=block_d,
            num_warps=BWD_WARPS)
        grad_h0 = None
        if h0_dtype is not None and dh0 is not None:
            grad_h0 = dh0.transpose(1, 2).to(h0_dtype)  # (B, D, K - 1)
        elif h0_dtype is not None:
            grad_h0 = x.new_zeros(batch, channels, 0, dtype=h0_dtype)
        return (dx, part_w.sum(0).to(w_dtype), part_b.sum(0).to(b_dtype) if has_bias else None, grad_h0, None, None)


def causal_conv_triton(x, weight, bias=None, *, activation=None, initial_state=None):
    """The short causal convolution through the Triton kernels above; the signature of the other backends."""
    # Inside the autograd function's forward grad mode is off: whether a backward will come is decided here.
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (x, weight, bias, initial_state))
    return _CausalConvTriton.apply(x, weight, bias, initial_state, activation, needs_grad)
