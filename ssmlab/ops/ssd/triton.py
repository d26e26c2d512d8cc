"""SSD in Triton kernels: Mamba-2's chunked algorithm (arXiv 2405.21060), forward and backward.

The kernels live in :mod:`ssmlab.ops._triton_chunk` (shared with ``linear_attention``); here SSD's
parameters become that recurrence's: the per-position log-decay ``a_t = dt_t A[h]``, so that the
gradient of ``a`` gives ``dA = sum dt * da`` and adds ``A * da`` to ``dt``'s.

Chunks of ``chunk_size`` positions, rounded up to a power of two in [16, 256] (``tl.dot`` needs blocks of
at least 16); any L. Computation in float32 (float64 for float64 inputs), the matrix products on x's dtype.
"""

from __future__ import annotations

import torch

from ssmlab.ops._triton_chunk import chunk_backward, chunk_forward
from ssmlab.ops.ssd.reference import compute_dtype


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, chunk_size):
        acc = compute_dtype(x.dtype)
        dt32, A32 = dt.to(acc), A.to(acc)
        Bx, Cx = B.to(x.dtype), C.to(x.dtype)
        d = None if D is None else (D[:, None] if D.dim() == 1 else D).expand(x.shape[2], x.shape[3]).to(acc)
        init = None if initial_state is None else initial_state.to(acc)
        y, final, saved = chunk_forward(x, dt32, dt32 * A32, Bx, Cx, d, init, chunk_size)
        ctx.save_for_backward(x, dt32, A32, Bx, Cx, d, final, *saved)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)  # an unused final state has no gradient to pass
        ctx.meta = (dt.dtype, A.dtype, B.dtype, C.dtype, None if D is None else D.dim(),
                    None if D is None else D.dtype, None if initial_state is None else initial_state.dtype)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt32, A32, Bx, Cx, d, final, *saved = ctx.saved_tensors
        dt_dtype, A_dtype, B_dtype, C_dtype, d_dim, d_dtype, init_dtype = ctx.meta
        dy = torch.zeros_like(x) if dy is None else dy
        dx, ddt, da, dB, dC, dD, dinit = chunk_backward(dy.to(x.dtype), dfinal, x, Bx, Cx, d, saved, final,
                                                        ctx.chunk_size)
        ddt = ddt + da * A32
        dA = (da * dt32).sum((0, 1))
        if dD is not None and d_dim == 1:
            dD = dD.sum(-1)
        return (dx, ddt.to(dt_dtype), dA.to(A_dtype), dB.to(B_dtype), dC.to(C_dtype),
                None if dD is None else dD.to(d_dtype), None if init_dtype is None else dinit.to(init_dtype), None)


def ssd_triton(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None):
    """The ``triton`` backend of :func:`ssmlab.ops.ssd`: y in x's dtype, the final state in the computation dtype."""
    return _SSD.apply(x, dt, A, B, C, D, initial_state, chunk_size)
