import math

import pytest
import torch

import ssmlab
from ssmlab.ops import fft_conv
from tests.utils import assert_close


def test_filters_are_prefixes_and_decay():
    torch.manual_seed(0)
    hy = ssmlab.create_mixer("hyena", 8, l_max=256, filter_order=16, dtype=torch.float64)
    long, short = hy.filter(256), hy.filter(100)
    assert_close(short, long[:, :100], atol=0, name="prefix")
    # The window makes late taps small relative to early ones, faster for the last channels (as the official code).
    early, late = long[:, :8].abs().mean(1), long[:, -64:].abs().mean(1)
    assert (late < early).all()
    assert late[-1] / early[-1] < late[0] / early[0]
    with pytest.raises(ValueError, match="exceeds l_max"):
        hy.filter(257)


def test_order_two_operator():
    torch.manual_seed(0)
    hy = ssmlab.create_mixer("hyena", 4, l_max=32, filter_order=8, dtype=torch.float64)
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    (x0, x1), v, _ = hy._streams(x, None)
    h = hy.filter(10)
    z = x1 * v
    z = fft_conv(z, h, D=hy.bias[0], backend="reference")
    assert_close(hy(x), hy.out_proj(x0 * z), atol=1e-12, name="hyena order 2")


def test_bad_options():
    with pytest.raises(ValueError, match="order"):
        ssmlab.create_mixer("hyena", 4, order=1)
    with pytest.raises(ValueError, match="emb_dim"):
        ssmlab.create_mixer("hyena", 4, emb_dim=4)


def test_window_and_encoding_follow_the_official_time_grid():
    """The official Hyena filter (arXiv 2302.10866; safari's ``PositionalEmbedding`` and
    ``ExponentialModulation``) puts position k at ``t = k / (l_max - 1)``, so t runs from 0 to 1, and
    windows channel c by ``exp(-t r_c)`` with r linear from ``ln(1/target) / slow_decay`` to
    ``ln(1/target) / fast_decay``; the encoding starts as ``[t, cos(f w), -sin(f w)]``, ``w = 2 pi k / l_max``."""
    l_max, d, target, fast, slow = 16, 3, 1e-2, 0.3, 1.5
    hy = ssmlab.create_mixer("hyena", d, l_max=l_max, filter_order=8, emb_dim=5, dtype=torch.float64)
    f = hy.filter
    k = torch.arange(l_max, dtype=torch.float64)
    t = torch.linspace(0, 1, l_max, dtype=torch.float64)
    rates = torch.linspace(math.log(1 / target) / slow, math.log(1 / target) / fast, d, dtype=torch.float64)
    window = torch.exp(-t[None, :] * rates[:, None])  # (channels, L)
    assert_close(f(l_max), f.ffn(f.z).T * window, atol=1e-13, name="windowed filter")
    w = 2 * math.pi * k / l_max
    bands = torch.tensor([1e-4, 1.0], dtype=torch.float64)
    z0 = torch.cat([t[:, None], torch.cos(bands * w[:, None]), -torch.sin(bands * w[:, None])], dim=-1)
    assert_close(f.z, z0, atol=1e-13, name="initial positional encoding")
