"""The ``numba`` backend of ``matvec``: blocks of output rows split across threads, each row a dot product.

Each thread streams its share of the weight matrix once, and each dot product runs
over a contiguous row, which the compiler vectorises; the rows of x (a few) are
read from cache. The kernel runs on ``torch.get_num_threads()`` threads (at most
Numba's own limit; with one, a serial build of the same loop runs) and is compiled
on first use, then cached on disk by Numba.
Under ``torch.compile`` and ``torch.export``, and on tensors that are not float32
or float64, the reference (``F.linear``) runs instead.
"""

from __future__ import annotations


import torch

from ssmlab.ops._dispatch import numba_available
from ssmlab.ops._recompute import run_with_reference_gradient
from ssmlab.ops.matvec import matvec_op, matvec_reference

_kernel = None
_BLOCK = 64  # output rows per task of the parallel loop


def _compiled(parallel: bool):
    """The kernel, its output rows split across threads when ``parallel`` (one thread runs the serial build,
    which has no thread pool to wake)."""
    global _kernel
    if _kernel is None:
        import numba

        def kernel(x, weight, scale, bias, scaled, has_bias, zero, y):
            """x (R, K), weight (N, K), scale and bias (N,), zero (1,) of x's dtype; writes y (R, N)."""
            rows, inner = x.shape
            outputs = weight.shape[0]
            for block in numba.prange((outputs + _BLOCK - 1) // _BLOCK):
                for n in range(block * _BLOCK, min(outputs, block * _BLOCK + _BLOCK)):
                    for r in range(rows):
                        total = zero[0]
                        for k in range(inner):
                            total += weight[n, k] * x[r, k]  # int8 times float32 is float32 in Numba
                        if scaled:
                            total *= scale[n]
                        y[r, n] = total + bias[n] if has_bias else total

        from ssmlab.ops._numba_math import serial_and_parallel

        _kernel = serial_and_parallel(kernel, "matvec")
    return _kernel[parallel]


def _run(x, weight, bias, scale=None):
    import numba

    from ssmlab.ops._numba_math import threads as numba_threads

    y = x.new_empty(x.shape[0], weight.shape[0])
    dummy = x.new_zeros(1)
    b = dummy if bias is None else bias.detach().contiguous()
    s = dummy if scale is None else scale.detach().contiguous()
    threads = numba_threads()
    if threads > 1:
        numba.set_num_threads(threads)
    _compiled(threads > 1)(x.detach().contiguous().numpy(), weight.detach().contiguous().numpy(), s.numpy(),
                           b.numpy(), scale is not None, bias is not None, dummy.numpy(), y.numpy())
    return y


class _MatVec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _run(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_y @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad_y.t() @ x if ctx.needs_input_grad[1] else None
        grad_b = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


@matvec_op.register("numba", priority=20, available=numba_available)
def matvec_numba(x, weight, bias=None, scale=None):
    if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64):
        return matvec_reference(x, weight, bias, scale)
    if scale is not None:  # int8 weights: no gradient for them; one for x and the others through the reference
        return run_with_reference_gradient(_run, matvec_reference, x, weight, bias, scale)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _MatVec.apply(x, weight, bias)
    return _run(x, weight, bias)
