import pytest
import torch

import ssmlab
from ssmlab.ops import dplr, fft_conv, ssm_kernel_dplr
from tests.utils import assert_close


def test_hippo_legs_initialisation_and_sharing():
    s4 = ssmlab.create_mixer("s4", 8, d_state=16, n_ssm=2, dtype=torch.float64)
    lam, p, b, c, dt = s4._system()
    Lambda, P, B, _ = dplr("legs", 16, conj_sym=True)
    assert_close(lam[0], Lambda, atol=1e-12, name="Lambda")
    assert_close(p[3], P, atol=1e-12, name="P")
    assert_close(b[7], B, atol=1e-12, name="B")
    assert lam.shape == (8, 8) and s4.log_A_real.shape == (2, 8)
    assert getattr(s4.log_dt, "_optim") == {"weight_decay": 0.0, "lr": 0.001}


def test_bidirectional_kernel_reads_the_future():
    torch.manual_seed(0)
    s4 = ssmlab.create_mixer("s4", 4, d_state=8, bidirectional=True, dtype=torch.float64)
    x = torch.randn(1, 10, 4, dtype=torch.float64)
    lam, p, b, c, dt = s4._system()
    k_f = ssm_kernel_dplr(lam, p, b, c[0], dt, 10, conj_sym=True)
    k_b = ssm_kernel_dplr(lam, p, b, c[1], dt, 10, conj_sym=True)
    want = fft_conv(x, torch.cat([k_f, k_b], -1), D=s4.D, bidirectional=True, backend="reference")
    assert_close(s4(x), s4.output(want), atol=1e-10, name="bidirectional S4")
    x2 = x.clone()
    x2[:, -1] += 1
    assert (s4(x2)[:, 0] - s4(x)[:, 0]).abs().max() > 1e-8


def test_bad_options():
    with pytest.raises(ValueError, match="even"):
        ssmlab.create_mixer("s4", 8, d_state=7)
    with pytest.raises(ValueError, match="n_ssm"):
        ssmlab.create_mixer("s4", 8, n_ssm=3)
