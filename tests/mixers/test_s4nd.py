import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_is_a_separable_2d_convolution():
    torch.manual_seed(0)
    layer = ssmlab.create_mixer("s4nd", 3, image_shape=(4, 5), d_state=4, dtype=torch.float64)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    k = layer.kernel()  # (D, 7, 9), offsets from -(H-1), -(W-1)
    img = x.reshape(2, 4, 5, 3)
    want = torch.zeros_like(img)
    for i in range(4):
        for j in range(5):
            for a in range(4):
                for b in range(5):
                    want[:, i, j] += k[:, i - a + 3, j - b + 4] * img[:, a, b]
    want = want.reshape(2, 20, 3) + layer.D * x
    assert_close(layer(x), layer.output(want), atol=1e-10, name="2-D convolution")
    kh, kw = layer._axis_kernel(layer.axis_h, 4), layer._axis_kernel(layer.axis_w, 5)
    assert_close(k, kh[:, :, None] * kw[:, None, :], atol=0, name="separable kernel")


def test_shape_errors():
    with pytest.raises(ValueError, match="image_shape"):
        ssmlab.create_mixer("s4nd", 3)
    layer = ssmlab.create_mixer("s4nd", 3, image_shape=(2, 2), d_state=4)
    with pytest.raises(ValueError, match=r"H\*W=4"):
        layer(torch.randn(1, 5, 3))
