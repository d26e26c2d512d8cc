import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_liquid_terms_are_weighted_products_of_consecutive_inputs():
    torch.manual_seed(0)
    layer = ssmlab.create_mixer("liquid-s4", 3, d_state=6, liquid_degree=3, dtype=torch.float64)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    lam, _, b, c, dt = layer._system()
    # Full conjugate spectrum, as the paper's code builds it.
    lam_f, b_f, c_f = (torch.cat([t, t.conj()], -1) for t in (lam, b, c[0]))
    b_bar = dt[:, None] * b_f / (1 - dt[:, None] * lam_f / 2)
    w2 = (c_f * b_bar * b_bar.sum(-1, keepdim=True)).sum(-1).real
    w3 = (c_f * b_bar * b_bar.sum(-1, keepdim=True) ** 2).sum(-1).real
    assert_close(layer._liquid_weights(), torch.stack([w2, w3]), atol=1e-12, name="liquid weights")
    pad = torch.cat([torch.zeros(2, 2, 3, dtype=torch.float64), x], 1)
    want = w2 * pad[:, 2:] * pad[:, 1:-1] + w3 * pad[:, 2:] * pad[:, 1:-1] * pad[:, :-2]
    assert_close(layer._extra_terms(x, None), want, atol=1e-12, name="liquid terms")


def test_bad_options():
    with pytest.raises(ValueError, match="liquid_degree"):
        ssmlab.create_mixer("liquid-s4", 4, liquid_degree=1)
    with pytest.raises(ValueError, match="bidirectional"):
        ssmlab.create_mixer("liquid-s4", 4, bidirectional=True)
