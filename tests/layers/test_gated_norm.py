import pytest
import torch

from ssmlab.layers import GatedRMSNorm
from tests.utils import assert_close


def _gated_rms_norm(x, z, weight, group_size, eps):
    """The definition: RMSNorm(x * silu(z)) over groups of ``group_size`` channels, then the weight."""
    h = x * z * torch.sigmoid(z)
    g = h.unflatten(-1, (-1, group_size))
    g = g / torch.sqrt(g.square().mean(-1, keepdim=True) + eps)
    return g.flatten(-2) * weight


@pytest.mark.parametrize("group_size", [12, 4])
def test_gated_rms_norm_with_and_without_autograd(group_size):
    """The in-place path (no autograd) and the autograd path both equal the definition."""
    g = torch.Generator().manual_seed(0)
    norm = GatedRMSNorm(12, group_size, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=g, dtype=torch.float64))
    x, z = (torch.randn(2, 5, 12, generator=g, dtype=torch.float64) for _ in range(2))
    want = _gated_rms_norm(x, z, norm.weight.detach(), group_size, 1e-5)
    with torch.no_grad():
        got = norm(x, z)
    assert_close(got, want, atol=1e-12, name="without autograd")
    assert_close(norm(x, z), want, atol=1e-12, name="with autograd")
    x0, z0 = x.clone(), z.clone()
    with torch.no_grad():
        norm(x, z)
    assert torch.equal(x, x0) and torch.equal(z, z0), "the in-place path wrote into its inputs"
