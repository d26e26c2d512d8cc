"""Mamba's training path: the dt projection's hand-written backward against autograd's."""

import torch

from ssmlab.mixers.mamba import _LowRank
from tests.utils import assert_close


def test_low_rank_projection_matches_autograd():
    """``dt @ weight.T`` for a strided dt (as split from x_proj's output): output and both gradients as autograd's
    plain product, and gradcheck."""
    g = torch.Generator().manual_seed(0)
    dt = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)[..., 1:5].requires_grad_(True)  # (2, 5, 4) strided
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    got = _LowRank.apply(dt, weight)
    got_grads = torch.autograd.grad(got, (dt, weight), grad)
    want = dt @ weight.T
    want_grads = torch.autograd.grad(want, (dt, weight), grad)
    assert_close(got, want, atol=1e-14, name="output")
    for name, a, b in zip(("grad dt", "grad weight"), got_grads, want_grads):
        assert_close(a, b, atol=1e-13, name=name)
    assert torch.autograd.gradcheck(_LowRank.apply, (dt, weight))
