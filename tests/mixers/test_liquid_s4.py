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


def _causal_conv(u, k):
    """Direct sum y_t = sum_{s<=t} k[t-s] u_s: u (B, L, H), k (H, L)."""
    length = u.shape[1]
    return torch.stack([sum(k[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(length)], dim=1)


@pytest.mark.parametrize("activation", [None, "lecun"])
def test_kb_kernel_convolves_scaled_correlations_with_the_s4_kernel(activation):
    """KB (arXiv 2209.12951): y = K*u + D u + sum_p (1^T B_bar)^(p-1) K * (u_t ... u_{t-p+1})."""
    from ssmlab.ops import ssm_kernel_dplr

    torch.manual_seed(0)
    layer = ssmlab.create_mixer("liquid-s4", 3, d_state=6, liquid_degree=3, liquid_kernel="kb",
                                correlation_activation=activation, dtype=torch.float64)
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    lam, p, b, c, dt = layer._system()
    kernel = ssm_kernel_dplr(lam, p, b, c[0], dt, 8, conj_sym=True)
    lam_f, b_f = (torch.cat([t, t.conj()], -1) for t in (lam, b))
    total = (dt[:, None] * b_f / (1 - dt[:, None] * lam_f / 2)).sum(-1).real  # (H,)
    # The official code's LeCun tanh: 1.7159 tanh(0.666 x).
    squash = (lambda t: t) if activation is None else (lambda t: 1.7159 * torch.tanh(0.666 * t))
    pad = torch.cat([torch.zeros(2, 2, 3, dtype=torch.float64), x], 1)
    corr2 = squash(pad[:, 2:] * pad[:, 1:-1])
    corr3 = squash(pad[:, 2:] * pad[:, 1:-1] * pad[:, :-2])
    pre = _causal_conv(x + total * corr2 + total ** 2 * corr3, kernel) + layer.D * x
    assert_close(layer(x), layer.output(pre), atol=1e-10, rtol=1e-10, name="KB output")
    assert layer._extra_terms(x, None) is None


def test_kb_and_pb_differ_and_bad_kernel_is_an_error():
    torch.manual_seed(0)
    pb = ssmlab.create_mixer("liquid-s4", 4, d_state=6, dtype=torch.float64)
    torch.manual_seed(0)
    kb = ssmlab.create_mixer("liquid-s4", 4, d_state=6, liquid_kernel="kb", dtype=torch.float64)
    x = torch.randn(1, 9, 4, dtype=torch.float64)
    assert (pb(x) - kb(x)).abs().max() > 1e-8
    with pytest.raises(ValueError, match="liquid_kernel"):
        ssmlab.create_mixer("liquid-s4", 4, liquid_kernel="kbb")
    with pytest.raises(ValueError, match="correlation_activation"):
        ssmlab.create_mixer("liquid-s4", 4, correlation_activation="relu")
