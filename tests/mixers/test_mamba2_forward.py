import torch

import ssmlab
from ssmlab.mixers.mamba2 import _channels_last
from tests.utils import assert_close


def test_channels_last_copies_a_transposed_tensor_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)  # (B, C, L)
    x = source.transpose(1, 2)  # (B, L, C), strided
    out = _channels_last(x)
    assert out.is_contiguous() and out.shape == x.shape
    assert torch.equal(out, x)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weight).sum().backward()
    assert_close(source.grad, weight.transpose(1, 2), atol=0, name="gradient")
    contiguous = torch.randn(2, 4, 3)
    assert _channels_last(contiguous) is contiguous


def test_forward_through_the_conv1d_path_matches_two_halves():
    """Past 2^20 numbers the short convolution runs conv1d and returns a (B, C, L) view: the mixer's output
    is still that of the sequence fed in two pieces with the state carried (the shifted path, both short)."""
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("mamba2", 16, d_state=8, headdim=8, chunk_size=64)
    x = torch.randn(1, (1 << 20) // mixer.conv_dim + 64, 16)
    with torch.no_grad():
        whole = mixer(x)
        first, state = mixer(x[:, :1000], return_state=True)
        second = mixer(x[:, 1000:], state)
    assert_close(whole, torch.cat([first, second], 1), atol=1e-4, name="whole against two pieces")
