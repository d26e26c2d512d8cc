import pytest
import torch

import ssmlab
from ssmlab.ops import dplr
from tests.utils import assert_close


def test_hippo_n_initialisation_in_blocks():
    s5 = ssmlab.create_mixer("s5", 8, d_state=16, blocks=2, dtype=torch.float64)
    lam = torch.complex(s5.Lambda_re, s5.Lambda_im)
    block = dplr("legs", 8, conj_sym=True)[0]
    assert_close(lam, torch.cat([block, block]), atol=1e-12, name="HiPPO-N eigenvalues per block")
    assert_close(s5.Lambda_re, torch.full((8,), -0.5, dtype=torch.float64), atol=1e-12, name="real parts")


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_forward_is_the_recurrence(discretization):
    torch.manual_seed(0)
    s5 = ssmlab.create_mixer("s5", 6, d_state=8, discretization=discretization, dtype=torch.float64)
    x = torch.randn(2, 25, 6, dtype=torch.float64)
    a_bar, b_bar, c = s5._discrete()
    h = torch.zeros(2, 4, dtype=torch.complex128)
    y = s5(x)
    for t in range(25):
        h = a_bar * h + x[:, t].to(h.dtype) @ b_bar.T
        g = torch.nn.functional.gelu(2 * (h @ c[0].T).real + s5.D * x[:, t])
        # The default output stage, the official half_glu1: g * sigmoid(W g + b).
        assert_close(y[:, t], g * torch.sigmoid(s5.gate(g)), atol=1e-12, name=f"y[{t}]")


def test_bidirectional_adds_a_backward_scan():
    torch.manual_seed(0)
    s5 = ssmlab.create_mixer("s5", 6, d_state=8, bidirectional=True, activation=None, dtype=torch.float64)
    assert not s5.causal
    x = torch.randn(1, 12, 6, dtype=torch.float64)
    a_bar, b_bar, c = s5._discrete()
    h_f, h_b = s5._scan(x, a_bar, b_bar, None), s5._scan(x.flip(1), a_bar, b_bar, None).flip(1)
    want = 2 * torch.einsum("hn,bln->blh", c[0], h_f).real + 2 * torch.einsum("hn,bln->blh", c[1], h_b).real
    assert_close(s5(x), want + s5.D * x, atol=1e-12, name="bidirectional output")
    with pytest.raises(RuntimeError, match="cannot step"):
        s5.step(x[:, 0], s5.init_state(1, dtype=torch.float64))


def test_bad_options():
    with pytest.raises(ValueError, match="multiple of 2"):
        ssmlab.create_mixer("s5", 8, d_state=12, blocks=4)
    with pytest.raises(ValueError, match="discretization"):
        ssmlab.create_mixer("s5", 8, discretization="euler")
    with pytest.raises(ValueError, match="activation"):
        ssmlab.create_mixer("s5", 8, activation="relu")
