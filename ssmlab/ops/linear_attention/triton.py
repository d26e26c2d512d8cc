"""Linear attention and retention in Triton kernels: the chunkwise form, forward and backward.

``S_t = gamma S_{t-1} + k_t^T v_t``, ``y_t = q_t S_t`` is the recurrence of
:mod:`ssmlab.ops._triton_chunk` (Mamba-2's chunked SSD algorithm, arXiv 2405.21060) with
x = v, B = k, C = q (one group per head), dt = 1, a constant log-decay ``log gamma`` per head
and the state transposed: the two ops share those kernels. The gradient of ``log gamma`` is the
sum over positions of the gradient of the per-position log-decay.

Chunks of ``chunk_size`` positions, rounded up to a power of two in [16, 256]; any L. Results in the
promotion of the inputs' dtypes (as the other backends); accumulation in float32 (float64 for float64).
"""

from __future__ import annotations

import torch

from ssmlab.ops._triton_chunk import chunk_backward, chunk_forward


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state, chunk_size):
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        acc = torch.promote_types(dtype, torch.float32)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        batch, length, heads, _ = q.shape
        dt = q.new_ones(batch, length, heads, dtype=acc)
        decay = q.new_zeros(heads, dtype=acc) if log_decay is None else log_decay.to(acc)
        a = decay.expand(batch, length, heads)
        init = None if initial_state is None else initial_state.to(acc).transpose(-1, -2)  # (B, H, V, K)
        y, final, saved = chunk_forward(v, dt, a, k, q, None, init, chunk_size)
        ctx.save_for_backward(q, k, v, final, *saved)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)  # an unused final state has no gradient to pass
        ctx.dtypes = (None if log_decay is None else log_decay.dtype,
                      None if initial_state is None else initial_state.dtype)
        return y, final.transpose(-1, -2).to(dtype)

    @staticmethod
    def backward(ctx, dy, dfinal):
        q, k, v, final, *saved = ctx.saved_tensors
        decay_dtype, init_dtype = ctx.dtypes
        dy = torch.zeros_like(v) if dy is None else dy.to(v.dtype)
        dfinal = None if dfinal is None else dfinal.transpose(-1, -2)
        dv, _, da, dk, dq, _, dinit = chunk_backward(dy, dfinal, v, k, q, None, saved, final, ctx.chunk_size)
        dlog_decay = None if decay_dtype is None else da.sum((0, 1)).to(decay_dtype)
        dinit = None if init_dtype is None else dinit.transpose(-1, -2).to(init_dtype)
        return dq, dk, dv, dlog_decay, dinit, None


def linear_attention_triton(q, k, v, *, log_decay=None, initial_state=None, chunk_size=64):
    """The ``triton`` backend of :func:`ssmlab.ops.linear_attention`."""
    return _LinearAttention.apply(q, k, v, log_decay, initial_state, chunk_size)
