"""``exp_flat``, the exponential of the one-position Numba kernels: float32 polynomial and float64 math.exp."""

import numpy as np
import pytest

pytest.importorskip("numba")


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2.5e-7), (np.float64, 1e-15)])
def test_exp_flat(dtype, rtol):
    from ssmlab.ops._numba_math import constants, exp_flat

    x = np.linspace(-87.0, 88.0, 100001).astype(dtype)
    out, bits = np.empty_like(x), np.empty(x.shape[0], np.int32)
    exp_flat(x, out, bits, constants(dtype))
    want = np.exp(x.astype(np.float64))
    assert out.dtype == dtype
    assert np.max(np.abs(out - want) / want) < rtol
    if dtype == np.float32:  # beyond the clamp: 0 below about -87.7, infinity above about 88.4
        edges = np.array([-88.5, -1e30, 89.0], dtype)
        exp_flat(edges, out[:3], bits[:3], constants(dtype))
        assert out[0] == 0 and out[1] == 0 and np.isinf(out[2])
