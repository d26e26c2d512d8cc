"""S4D (arXiv 2206.11893): its kernel against the dense system over the full conjugate spectrum."""

from __future__ import annotations

import pytest
import torch

import ssmlab
from ssmlab.ops import discretize_dense, ssm_kernel_dense
from tests.utils import assert_close


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["lin", "inv", "legs"])
@pytest.mark.parametrize("learn_B", [False, True])
def test_kernel_equals_dense_system_over_full_spectrum(disc, init, learn_B):
    """K[l] = C A_bar^l B_bar of the real system whose spectrum is A and its conjugates."""
    from ssmlab.mixers.s4d import DiagonalSSM

    torch.manual_seed(0)
    ssm = DiagonalSSM(3, 8, init=init, disc=disc, learn_B=learn_B, n_ssm=1, dtype=torch.float64)
    if learn_B:
        with torch.no_grad():
            ssm.B.add_(0.5 * torch.randn_like(ssm.B))
    a, c, dt = ssm._continuous()
    b = ssm._input(a)
    kernel = ssm.kernel(20)
    for h in range(3):
        full_a = torch.cat([a[h], a[h].conj()])
        full_b = torch.cat([b[h], b[h].conj()])
        full_c = torch.cat([c[0, h], c[0, h].conj()])
        a_bar, b_bar = discretize_dense(torch.diag(full_a), full_b, dt[h], disc)
        expected = ssm_kernel_dense(a_bar, b_bar, full_c, 20)
        assert expected.imag.abs().max() < 1e-10
        assert_close(kernel[h], expected.real, atol=1e-10, rtol=1e-10, name=f"{disc} kernel, channel {h}")


def test_discretisations_differ_and_bad_one_is_an_error():
    torch.manual_seed(0)
    zoh = ssmlab.create_mixer("s4d", 4, d_state=8, dtype=torch.float64)
    torch.manual_seed(0)
    bil = ssmlab.create_mixer("s4d", 4, d_state=8, discretization="bilinear", dtype=torch.float64)
    assert (zoh.ssm.kernel(16) - bil.ssm.kernel(16)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="disc"):
        ssmlab.create_mixer("s4d", 4, discretization="euler")
