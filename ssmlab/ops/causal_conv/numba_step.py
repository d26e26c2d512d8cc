"""The ``numba`` backend of ``causal_conv_step``: one position of the short convolution, with its SiLU and the
shifted state, in one compiled call (the reference launches half a dozen small PyTorch kernels for it).

The SiLU's exponential is :func:`ssmlab.ops._numba_math.exp_into` (through ``exp_flat``) (a vectorised polynomial in float32,
``math.exp`` in float64). The new state is a new tensor (the state passed in is left as it was). Gradients,
where asked for, come from the reference recomputed in the backward pass; tensors other than float32 and
float64, and code under ``torch.compile``, run the reference.
"""

from __future__ import annotations

from functools import partial

import torch

from ssmlab.ops._dispatch import numba_available  # noqa: F401  (registered in causal_conv/__init__.py)
from ssmlab.ops._recompute import run_with_reference_gradient
from ssmlab.ops.causal_conv.reference import step as _reference_step

_kernel = None


def _compiled():
    global _kernel
    if _kernel is None:
        import numba
        import numpy as np

        from ssmlab.ops._numba_math import exp_flat

        @numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
        def kernel(x, state, weight, bias, has_bias, silu, k, y, new):
            """x, y (Bt, D); state, new (Bt, D, K - 1); weight (D, K); bias (D,)."""
            batch, channels = x.shape
            width = weight.shape[1]
            pre, neg, exp_neg = np.empty(channels, y.dtype), np.empty(channels, y.dtype), np.empty(channels, y.dtype)
            bits = np.empty(channels, dtype=np.int32)
            for b in range(batch):
                for d in range(channels):
                    total = bias[d] if has_bias else k[0]
                    for j in range(width - 1):
                        total += weight[d, j] * state[b, d, j]
                    pre[d] = total + weight[d, width - 1] * x[b, d]
                    for j in range(width - 2):
                        new[b, d, j] = state[b, d, j + 1]
                    if width > 1:
                        new[b, d, width - 2] = x[b, d]
                if silu:
                    for d in range(channels):
                        neg[d] = -pre[d]
                    exp_flat(neg, exp_neg, bits, k)
                    for d in range(channels):
                        y[b, d] = pre[d] / (k[1] + exp_neg[d])
                else:
                    for d in range(channels):
                        y[b, d] = pre[d]

        _kernel = kernel
    return _kernel


def _run(x, weight, state, bias, activation):
    from ssmlab.ops._numba_math import constants

    np_ = lambda t: (t if t.dtype == x.dtype else t.to(x.dtype)).detach().contiguous().numpy()  # noqa: E731
    y, new = torch.empty_like(x), x.new_empty(state.shape)
    _compiled()(np_(x), np_(state), np_(weight), np_(x[0] if bias is None else bias), bias is not None,
                activation == "silu", constants(y.numpy().dtype), y.numpy(), new.numpy())
    return y, new


def causal_conv_step_numba(x, weight, state, bias, activation):
    if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64):
        return _reference_step(x, weight, state, bias, activation)
    return run_with_reference_gradient(partial(_run, activation=activation),
                                       partial(_reference_step, activation=activation), x, weight, state, bias)
