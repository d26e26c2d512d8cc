"""What the conformance suite cannot see of the Mamba-3 block: its parameters, initialisation and ranks."""

import pytest
import torch
import torch.nn.functional as F

from ssmlab import create_mixer
from ssmlab.mixers.mamba3 import heavy_tail_activation
from tests.utils import assert_close


def test_parameters_are_the_official_modules():
    """Names and shapes of mamba_ssm's Mamba3(32, d_state=16, headdim=8, ngroups=2, is_mimo=True, mimo_rank=2,
    is_outproj_norm=True) (modules/mamba3.py at e9594ce), so its state dict loads as it is: in_proj is
    [z, x, B, C, dt, A, trap, angles] = 64 + 64 + 64 + 64 + 8 + 8 + 8 + 4 outputs."""
    mixer = create_mixer("mamba3", 32, d_state=16, headdim=8, ngroups=2, mimo_rank=2, is_outproj_norm=True)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {"in_proj.weight": (284, 32), "dt_bias": (8,), "B_bias": (8, 2, 16), "C_bias": (8, 2, 16),
                      "B_norm.weight": (16,), "C_norm.weight": (16,), "mimo_x": (8, 2, 8), "mimo_z": (8, 2, 8),
                      "mimo_o": (8, 2, 8), "D": (8,), "norm.weight": (64,), "out_proj.weight": (32, 64)}


def test_initialisation():
    torch.manual_seed(0)
    mixer = create_mixer("mamba3", 32, d_state=16, headdim=8, mimo_rank=4, dtype=torch.float64)
    for name in ("B_bias", "C_bias", "D", "mimo_z", "B_norm.weight", "C_norm.weight"):
        assert torch.equal(mixer.get_parameter(name), torch.ones_like(mixer.get_parameter(name))), name
    for name in ("mimo_x", "mimo_o"):
        assert torch.equal(mixer.get_parameter(name), torch.full_like(mixer.get_parameter(name), 0.25)), name
    dt = F.softplus(mixer.dt_bias)
    assert bool((dt >= 0.001 - 1e-12).all()) and bool((dt <= 0.1 + 1e-12).all())


@pytest.mark.parametrize("d_state, rope_fraction, angles", [(128, 0.5, 32), (128, 1.0, 64), (6, 0.5, 1), (6, 1.0, 3)])
def test_rotary_angles(d_state, rope_fraction, angles):
    """S = floor(N * fraction) rounded down to even, halved, as the official split_tensor_size; the SISO
    kernels pair (2i, 2i+1), the MIMO kernels (i, i + N/2)."""
    siso = create_mixer("mamba3", 16, d_state=d_state, headdim=8, rope_fraction=rope_fraction)
    assert siso.num_rope_angles == angles and siso.rotary == "interleaved"
    assert siso.init_state(1)["angle"].shape == (1, 4, angles)
    mimo = create_mixer("mamba3", 16, d_state=d_state, headdim=8, rope_fraction=rope_fraction, mimo_rank=2)
    assert mimo.rotary == "halves"


def test_heavy_tail_activation():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    assert_close(heavy_tail_activation(x), torch.tensor([0.25, 0.5, 1.0, 1.5, 3.0], dtype=torch.float64), atol=0,
                 name="1 + x for x >= 0, 1 / (1 - x) below")


def test_mimo_with_identical_ranks_is_siso():
    """R copies of one rank (B, C of each group, biases repeated), x split evenly (mimo_x = 1/R), the outputs averaged
    (mimo_o = 1/R), no skip and no rotation: the state and output of the SISO block with the same weights."""
    torch.manual_seed(0)
    rank, options = 3, dict(d_state=8, headdim=4, ngroups=2, chunk_size=5, dtype=torch.float64)
    siso = create_mixer("mamba3", 16, **options)
    mimo = create_mixer("mamba3", 16, mimo_rank=rank, **options)
    d_inner, n, h = siso.d_inner, siso.d_state, siso.nheads
    with torch.no_grad():
        w = siso.in_proj.weight.normal_()
        w[-siso.num_rope_angles:] = 0.0
        z, x, b, c, rest = w.split([d_inner, d_inner, 2 * n, 2 * n, 3 * h + siso.num_rope_angles])
        mimo.in_proj.weight.copy_(torch.cat([z, x, b.repeat(rank, 1), c.repeat(rank, 1), rest]))
        for name in ("B_bias", "C_bias"):
            siso.get_parameter(name).normal_()
            mimo.get_parameter(name).copy_(siso.get_parameter(name).repeat(1, rank, 1))
        for name in ("dt_bias", "B_norm.weight", "C_norm.weight", "out_proj.weight"):
            mimo.get_parameter(name).copy_(siso.get_parameter(name).normal_(0.5, 0.1))
        siso.D.zero_()
        mimo.D.zero_()
    u = torch.randn(2, 12, 16, dtype=torch.float64)
    want, want_state = siso(u, return_state=True)
    got, state = mimo(u, return_state=True)
    assert_close(got, want, atol=1e-12, name="output")
    assert_close(state["ssm"], want_state["ssm"], atol=1e-12, name="state")
    assert_close(state["prev_B"], want_state["prev_B"].expand(-1, rank, -1, -1), atol=1e-12, name="previous B")
    assert_close(state["prev_x"] * rank, want_state["prev_x"].expand(-1, rank, -1, -1), atol=1e-12,
                 name="previous x")
    assert want.abs().max() > 1e-3


def test_mimo_is_registered_as_its_own_model():
    mixer = create_mixer("mamba3-mimo", d_model=16, headdim=8, d_state=8)
    assert mixer.mimo_rank == 4
    with pytest.raises(ValueError, match="mimo_rank must be at least 2"):
        create_mixer("mamba3-mimo", d_model=16, headdim=8, d_state=8, mimo_rank=1)
