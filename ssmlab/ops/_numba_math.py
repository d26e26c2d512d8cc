"""Vectorisable elementary functions for the Numba kernels of the ops; imported only where Numba is used.

Every function takes ``k``, the constants of :func:`constants` in the kernel's precision: in float32 the
exponential is a polynomial that vectorises (``math.exp`` is a scalar call), in float64 ``math.exp``. The
``*_into`` helpers marked inline take their caller's fastmath flags and are called only from kernels compiled
without reassociation (which would undo the exponential's two-part reduction of the argument); kernels compiled
with it call :func:`exp_flat`, a function of its own.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

_inline = numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy", inline="always")


@functools.lru_cache(maxsize=None)
def constants(dtype) -> np.ndarray:
    """The kernels' constants in their own precision (float32 arithmetic stays float32 and vectorises twice as
    wide): 0, 1, the clamp of exp's argument, 1/2, log2(e), ln(2) in two parts (Cody and Waite), 1/2!, ..., 1/7!,
    and 1 to use the polynomial exponential (float32), 0 for ``math.exp``. One array per dtype, shared by every
    call: the kernels only read it."""
    fast = 1.0 if dtype == np.float32 else 0.0
    values = [0.0, 1.0, -127 * math.log(2), 128 * math.log(2), 0.5, 1 / math.log(2), 0.693359375,
              math.log(2) - 0.693359375]
    return np.array(values + [1.0 / math.factorial(i) for i in range(2, 8)] + [fast], dtype=dtype)


@_inline
def exp_into(x, out, bits, scale, k):
    """out[j] = exp(x[j]) for j < P; x, out, bits, scale (P,): ``decays_into`` with A = 1."""
    width = out.shape[0]
    if k[14] == k[0]:
        for j in range(width):
            out[j] = math.exp(x[j])
        return
    one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
    for j in range(width):
        a = min(max(x[j], lo), hi)
        i = np.floor(a * log2e + half)
        r = (a - i * ln2_hi) - i * ln2_lo
        out[j] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        bits[j] = (np.int32(i) + np.int32(127)) << 23
    for j in range(width):
        out[j] *= scale[j]


@_inline
def softplus_into(x, out, slope, work, bits, scale, k):
    """out[j] = softplus(x[j]) = log(1 + exp(x[j])) and slope[j] = sigmoid(x[j]), its derivative, for j < P;
    ``x`` itself above 20 (slope 1), as ``torch.nn.functional.softplus``. ``work`` (P,) is scratch.

    In float32 (``k[-1] == 1``), with e = exp(-|x|) from ``exp_into``: log(1 + e) = 2 atanh(s), s = e / (2 + e)
    in [0, 1/3], by its series to s^15 (relative error below 2e-8); in float64, ``math.log1p(math.exp(x))``.
    """
    width = out.shape[0]
    one = k[1]
    if k[14] == k[0]:
        for j in range(width):
            if x[j] > 20.0:
                out[j] = x[j]
                slope[j] = one
            else:
                e = math.exp(x[j])
                out[j] = math.log1p(e)
                slope[j] = e / (e + one)
        return
    for j in range(width):
        work[j] = -abs(x[j])
    exp_into(work, work, bits, scale, k)
    two = one + one
    for j in range(width):
        e = work[j]
        sv = e / (two + e)
        q = sv * sv
        series = one + q * (np.float32(1 / 3) + q * (np.float32(1 / 5) + q * (np.float32(1 / 7) + q * (
            np.float32(1 / 9) + q * (np.float32(1 / 11) + q * (np.float32(1 / 13) + q * np.float32(1 / 15)))))))
        xv = x[j]
        pos = xv > k[0]
        soft = max(xv, k[0]) + two * sv * series
        big = xv > np.float32(20.0)
        out[j] = xv if big else soft
        inv = one / (one + e)
        slope[j] = one if big else (inv if pos else e * inv)


@_inline
def silu_into(z, out, slope, bits, scale, k):
    """out[j] = silu(z[j]) = z[j] sigmoid(z[j]) and slope[j] = sigmoid(z[j]) for j < P."""
    width = out.shape[0]
    one = k[1]
    for j in range(width):
        slope[j] = -z[j]
    exp_into(slope, slope, bits, scale, k)
    for j in range(width):
        sig = one / (one + slope[j])
        slope[j] = sig
        out[j] = z[j] * sig


@numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def exp_flat(x, out, bits, k):
    """``out = exp(x)`` over flat arrays of one length, ``bits`` (int32, as long) scratch: :func:`exp_into` as a
    function of its own, for kernels compiled with reassociation."""
    exp_into(x, out, bits, bits.view(np.float32), k)


@numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def softplus_flat(x, out, slope, work, bits, k):
    """:func:`softplus_into` as a function of its own, for kernels compiled with reassociation."""
    softplus_into(x, out, slope, work, bits, bits.view(np.float32), k)


def serial_and_parallel(kernel, name: str) -> dict:
    """``{False: serial build, True: parallel build}`` of ``kernel`` (whose ``numba.prange`` loops split across
    threads in the parallel build), compiled with reassociation. Numba's disk cache is keyed on the function's
    qualified name, not on its options: each build gets a name of its own, or the two would share one cache
    entry and the parallel one could run serially."""
    import types

    builds = {}
    for parallel in (False, True):
        fn = types.FunctionType(kernel.__code__, kernel.__globals__, f"{name}_{'parallel' if parallel else 'serial'}",
                                kernel.__defaults__, kernel.__closure__)
        fn.__qualname__ = fn.__name__
        builds[parallel] = numba.njit(parallel=parallel, cache=True, fastmath={"reassoc", "contract", "nsz"},
                                      error_model="numpy")(fn)
    return builds


def threads() -> int:
    """Threads for the parallel builds: torch's thread count, at most Numba's."""
    import torch

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
