"""The short causal convolution with its state: the causal form of a padded ``nn.Conv1d``, and the
same result whole, in pieces, one position at a time and over a right-padded batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmlab.layers import ShortConvolution, causal_conv
from tests.utils import assert_close

C = 5


def conv(width, bias=True):
    torch.manual_seed(0)
    return ShortConvolution(C, width, bias=bias, dtype=torch.float64)


def inputs(length, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, C, generator=g, dtype=torch.float64)


def test_parameters_and_init_are_those_of_a_depthwise_conv1d():
    layer = conv(4)
    torch.manual_seed(0)
    plain = nn.Conv1d(C, C, 4, groups=C, dtype=torch.float64)
    assert dict(layer.named_parameters()).keys() == {"weight", "bias"}
    assert torch.equal(layer.weight, plain.weight) and torch.equal(layer.bias, plain.bias)
    assert ShortConvolution(C, 3, bias=False).bias is None


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_a_left_padded_conv1d(width, bias):
    layer, x = conv(width, bias), inputs(7)
    want = nn.functional.conv1d(nn.functional.pad(x.transpose(1, 2), (width - 1, 0)), layer.weight, layer.bias,
                                groups=C).transpose(1, 2)
    assert_close(layer(x), want, atol=1e-14, name="causal conv vs padded conv1d")


@pytest.mark.parametrize("width", [1, 2, 4])
def test_pieces_steps_and_state(width):
    layer, x = conv(width), inputs(9)
    y, state = layer(x, return_state=True)
    assert state.shape == (3, C, width - 1)
    assert_close(state, x.transpose(1, 2)[..., 9 - (width - 1):], atol=0, name="state: the last k - 1 inputs")
    y1, s1 = layer(x[:, :2], return_state=True)
    y2, s2 = layer(x[:, 2:], s1, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y, atol=1e-14, name="two pieces vs one")
    assert_close(s2, state, atol=0, name="state after two pieces")
    s, steps = layer.init_state(3), []
    for t in range(9):
        y_t, s = layer.step(x[:, t], s)
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), y, atol=1e-14, name="steps vs forward")
    assert_close(s, state, atol=0, name="state after steps")


def test_right_padded_batch_keeps_each_rows_last_inputs():
    layer, x = conv(3), inputs(6)
    lengths = torch.tensor([6, 2, 0])
    y, state = layer(x, return_state=True, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        _, row_state = layer(x[b:b + 1, :n], return_state=True) if n else (None, layer.init_state(1))
        assert_close(state[b], row_state[0], atol=0, name=f"row {b} state, length {n}")
    assert_close(y, layer(x), atol=0, name="outputs: padding comes after the real positions")


def test_functional_form_takes_any_weight():
    """H3's shift SSM computes its taps; the functional form convolves with them and carries the state."""
    x, weight = inputs(5), torch.randn(C, 1, 3, dtype=torch.float64)
    y, state = causal_conv(x, weight)
    assert_close(y[:, 0], weight[:, 0, -1] * x[:, 0], atol=1e-15, name="first output sees only x_0")
    assert_close(state, x.transpose(1, 2)[..., 3:], atol=0, name="state")


def test_functional_form_applies_the_activation():
    x, weight, bias = inputs(5), torch.randn(C, 1, 3, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    plain, state = causal_conv(x, weight, bias)
    y, state_silu = causal_conv(x, weight, bias, activation="silu")
    assert_close(y, nn.functional.silu(plain), atol=1e-15, name="silu of the convolution")
    assert_close(state_silu, state, atol=0, name="the state holds inputs, not outputs")
