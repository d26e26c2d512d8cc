import math

import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_ema_convolution_equals_its_recurrence():
    torch.manual_seed(0)
    mega = ssmlab.create_mixer("mega", 4, ndim=3, max_positions=64, dtype=torch.float64)
    x = torch.randn(2, 40, 4, dtype=torch.float64)
    alpha, delta = torch.sigmoid(mega.alpha), torch.sigmoid(mega.delta)
    h = torch.zeros(2, 4, 3, dtype=torch.float64)
    outs = []
    for t in range(40):
        h = alpha * mega.beta * x[:, t, :, None] + (1 - alpha * delta) * h
        # C = eta * sqrt(1 / h), as the official MultiHeadEMA's gamma * scale
        outs.append((mega.eta * h).sum(-1) / math.sqrt(3) + mega.omega * x[:, t])
    y, h_last = mega._ema(x, None, True)
    assert_close(y, torch.stack(outs, 1), atol=1e-12, name="EMA conv vs recurrence")
    assert_close(h_last, h, atol=1e-12, name="EMA state")


def test_chunked_attention_does_not_cross_chunks():
    torch.manual_seed(0)
    mega = ssmlab.create_mixer("mega", 4, ndim=2, chunk_size=4, max_positions=64, dtype=torch.float64)
    mega.alpha.data.fill_(-30.0)  # alpha ~ 0: the EMA carries nothing, only attention could
    x = torch.randn(1, 8, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1] += 1.0
    y, y2 = mega(x), mega(x2)
    assert (y2[:, 1:4] - y[:, 1:4]).abs().max() > 1e-6  # same chunk: affected
    assert (y2[:, 4:] - y[:, 4:]).abs().max() < 1e-9  # next chunk: not reached by attention


def test_context_limit_and_bad_options():
    mega = ssmlab.create_mixer("mega", 4, ndim=2, max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        mega(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match="positive"):
        ssmlab.create_mixer("mega", 4, ndim=0)


def test_initialisation_follows_the_official_code():
    """facebookresearch/mega: projections N(0, 0.02) with zero biases, query/key scales N(0, 0.02) (mean 0)."""
    torch.manual_seed(0)
    mega = ssmlab.create_mixer("mega", 64, ndim=4, z_dim=64, max_positions=16, dtype=torch.float64)
    for proj in (mega.v_proj, mega.mx_proj, mega.h_proj):
        assert abs(proj.weight.std().item() - 0.02) < 0.002
        assert proj.bias.abs().max().item() == 0.0
    assert abs(mega.qk_scale.mean().item()) < 0.01 and abs(mega.qk_scale.std().item() - 0.02) < 0.005
