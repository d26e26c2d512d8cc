import pytest
import torch

from ssmlab.layers.headwise import HeadwiseLinear
from tests.utils import assert_close


@pytest.mark.parametrize("bias", [False, True])
def test_is_a_block_diagonal_linear_map(bias):
    """Block b of the output is W_b times block b of the input: the dense map is block-diagonal."""
    torch.manual_seed(0)
    layer = HeadwiseLinear(12, 3, 6, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
    dense = torch.block_diag(*layer.weight)  # (6, 12)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    want = x @ dense.T + (layer.bias if bias else 0)
    assert_close(layer(x), want, atol=1e-14, name="headwise vs block-diagonal dense")
    assert layer.weight.shape == (3, 2, 4)
    assert abs(HeadwiseLinear(400, 100).weight.std().item() / (2 / 5 / 4) ** 0.5 - 1) < 0.1


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiples of n_blocks=5"):
        HeadwiseLinear(12, 5)
