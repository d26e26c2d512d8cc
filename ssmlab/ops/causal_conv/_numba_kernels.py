"""Numba kernels of the causal convolution; see :mod:`ssmlab.ops.causal_conv.numba`. Imported only when used."""

from __future__ import annotations

import numba
import numpy as np

from ssmlab.ops._numba_math import silu_into

# Without reassociation: silu_into's exponential must keep its two-part reduction. Every inner loop runs over the
# channels d from 0, which the compiler vectorises.
_jit = numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")


@_jit
def _pre_activation(x, state, w, bias, pre):
    """pre[b, t, d] = bias[d] + sum_j w[j, d] xs[b, t + j, d], xs = state ++ x; x, pre (Bt, L, D), state
    (Bt, K - 1, D), w (K, D), bias (D,)."""
    batch, length, channels = x.shape
    width = w.shape[0]
    for b in range(batch):
        for t in range(length):
            for d in range(channels):
                pre[b, t, d] = bias[d]
            for j in range(width):
                p = t + j
                if p >= width - 1:
                    for d in range(channels):
                        pre[b, t, d] += w[j, d] * x[b, p - (width - 1), d]
                else:
                    for d in range(channels):
                        pre[b, t, d] += w[j, d] * state[b, p, d]


@_jit
def forward(x, state, w, bias, silu, y, k):
    """y = silu(pre) (or pre unless ``silu``), pre as ``_pre_activation``; y (Bt, L, D) contiguous."""
    _pre_activation(x, state, w, bias, y)
    if silu:
        flat = y.reshape(y.size)
        slope = np.empty(y.size, dtype=y.dtype)
        bits = np.empty(y.size, dtype=np.int32)
        silu_into(flat, flat, slope, bits, bits.view(np.float32), k)


@_jit
def backward(x, state, w, bias, silu, dy, dfinal, dxs, dw, dbias, k):
    """Gradients given dy (Bt, L, D) and dfinal (Bt, K - 1, D), the final state's (the last K - 1 positions of
    ``state ++ x``): writes dxs (Bt, K - 1 + L, D), the gradient of ``state ++ x``, and adds to dw (K, D) and
    dbias (D,) (zeros on entry). With ``silu`` the pre-activation is recomputed."""
    batch, length, channels = x.shape
    width = w.shape[0]
    grad = np.empty((batch, length, channels), dtype=x.dtype)
    if silu:
        _pre_activation(x, state, w, bias, grad)
        flat = grad.reshape(grad.size)
        act = np.empty(grad.size, dtype=x.dtype)
        sig = np.empty(grad.size, dtype=x.dtype)
        bits = np.empty(grad.size, dtype=np.int32)
        silu_into(flat, act, sig, bits, bits.view(np.float32), k)
        one = k[1]
        upstream = dy.reshape(dy.size)
        for i in range(grad.size):
            s = sig[i]
            flat[i] = upstream[i] * s * (one + flat[i] * (one - s))
    else:
        grad[:] = dy
    dxs[:] = 0
    for b in range(batch):
        for i in range(width - 1):
            for d in range(channels):
                dxs[b, length + i, d] = dfinal[b, i, d]
        for t in range(length):
            for d in range(channels):
                dbias[d] += grad[b, t, d]
            for j in range(width):
                p = t + j
                for d in range(channels):
                    dxs[b, p, d] += w[j, d] * grad[b, t, d]
                if p >= width - 1:
                    for d in range(channels):
                        dw[j, d] += grad[b, t, d] * x[b, p - (width - 1), d]
                else:
                    for d in range(channels):
                        dw[j, d] += grad[b, t, d] * state[b, p, d]
