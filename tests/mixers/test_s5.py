import math

import pytest
import torch

import ssmlab
from ssmlab.mixers.s5 import hippo_n_blocks
from ssmlab.ops import dplr
from tests.utils import assert_close

# The official code's LeCun normal is truncated at two standard deviations of the untruncated
# normal, whose std is the requested one divided by 0.8796 (the std of N(0, 1) cut to [-2, 2]).
TRUNCATION = 2 / 0.87962566103423978


def test_hippo_n_initialisation_in_blocks():
    s5 = ssmlab.create_mixer("s5", 8, d_state=16, blocks=2, dtype=torch.float64)
    lam = torch.complex(s5.Lambda_re, s5.Lambda_im)
    block = dplr("legs", 8, conj_sym=True)[0].conj()
    assert_close(lam, torch.cat([block, block]), atol=1e-12, name="HiPPO-N eigenvalues per block")
    assert_close(s5.Lambda_re, torch.full((8,), -0.5, dtype=torch.float64), atol=1e-12, name="real parts")


def test_default_is_eight_blocks_kept_as_the_official_code_keeps_them():
    # run_train.py's default --blocks=8; make_DPLR_HiPPO's eigh sorts the imaginary parts in
    # ascending order and the official code keeps the first half: negative, most negative first.
    s5 = ssmlab.create_mixer("s5", 8, d_state=64, dtype=torch.float64)
    block = torch.complex(s5.Lambda_re, s5.Lambda_im).reshape(8, 4)
    for j in range(8):
        assert_close(block[j], block[0], atol=0, name=f"block {j}")
    assert (block.imag < 0).all() and (block.imag.diff(dim=1) > 0).all()
    eig, V = hippo_n_blocks(64, 8)
    assert_close(V.conj().T @ V, torch.eye(32, dtype=V.dtype), atol=1e-12, name="orthonormal eigenvectors")


def _b_in_the_original_basis(s5):
    # B~ = V^H B with B real: B = V B~ + conj(V B~), the dropped half being the conjugates.
    _, V = hippo_n_blocks(s5.d_state, s5.d_state // 8)
    return 2 * (V @ torch.view_as_complex(s5.B.contiguous())).real  # (P, H)


def test_b_is_truncated_lecun_normal_with_fan_in_p():
    # s5/ssm.py: B_init = lecun_normal() on shape (P, H): jax's fan-in axis is -2, so std 1/sqrt(P).
    torch.manual_seed(0)
    H, P = 256, 64
    s5 = ssmlab.create_mixer("s5", H, d_state=P, blocks=8, dtype=torch.float64)
    b = _b_in_the_original_basis(s5)
    std = 1 / math.sqrt(P)
    print(f"B std {b.std().item():.5f}, want {std:.5f}; max |B| * sqrt(P) = {b.abs().max().item() * math.sqrt(P):.4f}")
    assert abs(b.std().item() / std - 1) < 0.03
    assert b.abs().max().item() <= TRUNCATION * std * (1 + 1e-9)
    assert b.abs().max().item() > 0.95 * TRUNCATION * std


@pytest.mark.parametrize("c_init, std", [("trunc_standard_normal", lambda H, P: 1 / math.sqrt(P)),
                                         ("lecun_normal", lambda H, P: 1 / math.sqrt(P * H)),
                                         ("complex_normal", lambda H, P: math.sqrt(0.5))])
def test_c_init_options(c_init, std):
    torch.manual_seed(0)
    H, P = 128, 64
    s5 = ssmlab.create_mixer("s5", H, d_state=P, c_init=c_init, bidirectional=True, dtype=torch.float64)
    c = s5.C.detach()  # (2, H, P/2, 2)
    for part in (c[..., 0], c[..., 1]):
        assert abs(part.std().item() / std(H, P) - 1) < 0.05, (c_init, part.std().item(), std(H, P))
    assert not torch.equal(c[0], c[1])
    with pytest.raises(ValueError, match="c_init"):
        ssmlab.create_mixer("s5", 8, d_state=16, blocks=2, c_init="uniform")


def test_output_stage_as_flax_dense_and_gelu():
    torch.manual_seed(0)
    H = 256
    s5 = ssmlab.create_mixer("s5", H, d_state=16, activation="full_glu", dtype=torch.float64)
    for linear in (s5.gate, s5.value):
        w = linear.weight.detach()
        assert torch.equal(linear.bias.detach(), torch.zeros(H, dtype=torch.float64))
        assert abs(w.std().item() * math.sqrt(H) - 1) < 0.03
        assert w.abs().max().item() <= TRUNCATION / math.sqrt(H) * (1 + 1e-9)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_forward_is_the_recurrence(discretization):
    torch.manual_seed(0)
    s5 = ssmlab.create_mixer("s5", 6, d_state=8, blocks=2, discretization=discretization, dtype=torch.float64)
    x = torch.randn(2, 25, 6, dtype=torch.float64)
    a_bar, b_bar, c = s5._discrete()
    h = torch.zeros(2, 4, dtype=torch.complex128)
    y = s5(x)
    for t in range(25):
        h = a_bar * h + x[:, t].to(h.dtype) @ b_bar.T
        # The default output stage, the official half_glu1 with flax's (tanh) GELU: g * sigmoid(W g + b).
        g = torch.nn.functional.gelu(2 * (h @ c[0].T).real + s5.D * x[:, t], approximate="tanh")
        assert_close(y[:, t], g * torch.sigmoid(s5.gate(g)), atol=1e-12, name=f"y[{t}]")


def test_bidirectional_adds_a_backward_scan():
    torch.manual_seed(0)
    s5 = ssmlab.create_mixer("s5", 6, d_state=8, blocks=4, bidirectional=True, activation=None,
                             dtype=torch.float64)
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
    with pytest.raises(ValueError, match="blocks defaults to 8"):
        ssmlab.create_mixer("s5", 8, d_state=8)
    with pytest.raises(ValueError, match="discretization"):
        ssmlab.create_mixer("s5", 8, discretization="euler")
    with pytest.raises(ValueError, match="activation"):
        ssmlab.create_mixer("s5", 8, activation="relu")
