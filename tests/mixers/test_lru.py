import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_ring_initialisation():
    torch.manual_seed(0)
    lru = ssmlab.create_mixer("lru", 16, d_state=4000, r_min=0.4, r_max=0.9, max_phase=0.5, dtype=torch.float64)
    lam, _, _ = lru._params()
    assert lam.abs().min() >= 0.4 - 1e-9 and lam.abs().max() <= 0.9 + 1e-9
    # |lambda|^2 is uniform on [r_min^2, r_max^2]: its mean is the midpoint.
    assert abs(lam.abs().square().mean().item() - (0.16 + 0.81) / 2) < 0.02
    assert lam.angle().min() >= 0 and lam.angle().max() <= 0.5 + 1e-9
    # gamma normalisation: gamma^2 = 1 - |lambda|^2 at initialisation.
    assert_close(torch.exp(2 * lru.gamma_log), 1 - lam.abs().square(), atol=1e-12, name="gamma")


def test_forward_is_the_recurrence():
    torch.manual_seed(0)
    lru = ssmlab.create_mixer("lru", 8, d_state=5, dtype=torch.float64)
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    lam, b, c = lru._params()
    h = torch.zeros(2, 5, dtype=torch.complex128)
    for t in range(30):
        h = lam * h + x[:, t].to(b.dtype) @ b.T
        assert_close(lru(x)[:, t], (h @ c.T).real + lru.D * x[:, t], atol=1e-12, name=f"y[{t}]")


@pytest.mark.parametrize("backend", ["reference", "associative", "chunked"])
def test_scan_backends_agree(backend):
    torch.manual_seed(0)
    lru = ssmlab.create_mixer("lru", 8, d_state=6, dtype=torch.float64)
    x = torch.randn(1, 70, 8, dtype=torch.float64)
    want = lru(x)
    lru.backend = backend
    assert_close(lru(x), want, atol=1e-12, name=backend)


def test_bad_options():
    with pytest.raises(ValueError, match="r_min"):
        ssmlab.create_mixer("lru", 8, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="max_phase"):
        ssmlab.create_mixer("lru", 8, max_phase=0)
