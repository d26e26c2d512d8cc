"""RMSNorm: ``x / sqrt(mean(x^2) + eps) * weight`` in float32 or wider, whichever path computes it."""

import pytest
import torch

from ssmlab.layers import RMSNorm
from tests.utils import assert_close


def _formula(x, weight, eps):
    xf = x.double()
    return xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


@pytest.mark.parametrize("dtype, weight_dtype, atol", [(torch.float64, torch.float64, 1e-12),
                                                         (torch.float32, torch.float32, 1e-5),
                                                         (torch.bfloat16, torch.float32, 2e-2),
                                                         (torch.float32, torch.float64, 1e-5)])
def test_rmsnorm_matches_the_formula_with_its_gradients(dtype, weight_dtype, atol):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(12, eps=1e-3)
    norm.weight.data = torch.randn(12, generator=g).to(weight_dtype)
    x = (torch.randn(3, 4, 12, generator=g) * 5).to(dtype).requires_grad_()
    y = norm(x)
    assert y.dtype == dtype
    assert_close(y.double(), _formula(x.detach(), norm.weight.detach(), 1e-3), atol=atol, rtol=atol, name="y")
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, norm.weight), grad.to(dtype))
    xd, wd = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    want = torch.autograd.grad(_formula(xd, wd, 1e-3), (xd, wd), grad)
    for name, a, b in zip(("x", "weight"), got, want):
        assert_close(a.double(), b, atol=atol * 10, rtol=atol * 10, name=f"gradient of {name}")
