"""The ``numba`` backend of ``matvec``: blocks of output rows split across threads, each row a dot product.

Each thread streams its share of the weight matrix once, and each dot product runs
over a contiguous row, which the compiler vectorises; the rows of x (a few) are
read from cache. The kernel runs on ``torch.get_num_threads()`` threads (at most
Numba's own limit; with one, a serial build of the same loop runs) and is compiled
on first use, then cached on disk by Numba.
Under ``torch.compile`` and ``torch.export``, and on tensors that are not float32
or float64, ``F.linear`` runs instead.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ssmlab.ops.matvec import matvec_op

_kernel = None
_BLOCK = 64  # output rows per task of the parallel loop


def numba_available(device: torch.device) -> bool:
    """Numba is importable and the tensors are on the CPU."""
    return device.type == "cpu" and importlib.util.find_spec("numba") is not None


def _compiled(parallel: bool):
    """The kernel, its output rows split across threads when ``parallel`` (one thread runs the serial build,
    which has no thread pool to wake)."""
    global _kernel
    if _kernel is None:
        import numba

        def kernel(x, weight, bias, has_bias, y):  # x (R, K), weight (N, K), bias (N,), y (R, N)
            rows, inner = x.shape
            outputs = weight.shape[0]
            for block in numba.prange((outputs + _BLOCK - 1) // _BLOCK):
                for n in range(block * _BLOCK, min(outputs, block * _BLOCK + _BLOCK)):
                    for r in range(rows):
                        total = bias[n] if has_bias else weight[n, 0] * 0
                        for k in range(inner):
                            total += weight[n, k] * x[r, k]
                        y[r, n] = total

        options = dict(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
        _kernel = {True: numba.njit(parallel=True, **options)(kernel), False: numba.njit(**options)(kernel)}
    return _kernel[parallel]


def _threads() -> int:
    import numba
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _run(x, weight, bias):
    import numba
    y = x.new_empty(x.shape[0], weight.shape[0])
    b = weight.new_zeros(1) if bias is None else bias.detach().contiguous()
    threads = _threads()
    if threads > 1:
        numba.set_num_threads(threads)
    _compiled(threads > 1)(x.detach().contiguous().numpy(), weight.detach().contiguous().numpy(), b.numpy(),
                           bias is not None, y.numpy())
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
def matvec_numba(x, weight, bias=None):
    if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _MatVec.apply(x, weight, bias)
    return _run(x, weight, bias)
