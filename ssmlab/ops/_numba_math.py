"""Vectorisable elementary functions for the Numba kernels of the ops; imported only where Numba is used."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def exp_into(x, out, bits, k):
    """``out = exp(x)`` over flat arrays of one length; ``bits`` (int32, as long) is scratch space.

    In float32 (``k[14] == 1``; ``k`` from :func:`ssmlab.ops.selective_scan._numba_kernels.constants`) it is
    the polynomial of ``_numba_kernels.exp_row`` (2^i from its bit pattern times a degree-7 polynomial of the
    remainder), which vectorises where ``math.exp`` is a scalar call; otherwise ``math.exp``. Compiled without
    reassociation, which would undo the two-part reduction of the argument.
    """
    if k[14] == k[0]:
        for j in range(x.shape[0]):
            out[j] = math.exp(x[j])
        return
    one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
    for j in range(x.shape[0]):
        a = min(max(x[j], lo), hi)
        i = np.floor(a * log2e + half)  # np.floor keeps float32 (math.floor returns an integer: float64 after)
        r = (a - i * ln2_hi) - i * ln2_lo
        out[j] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        bits[j] = (np.int32(i) + np.int32(127)) << 23
    scale = bits.view(np.float32)
    for j in range(x.shape[0]):
        out[j] *= scale[j]
