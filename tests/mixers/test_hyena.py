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
    # The window makes late taps small relative to early ones, faster for the first channels.
    early, late = long[:, :8].abs().mean(1), long[:, -64:].abs().mean(1)
    assert (late < early).all()
    assert late[0] / early[0] < late[-1] / early[-1]
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
