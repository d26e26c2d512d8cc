import numpy as np
import pytest
import torch
from scipy.signal import cont2discrete

from ssmlab.ops import (discretize_dense, discretize_diag, discretize_dplr, dplr, dplr_dense, hippo,
                        init_log_dt)
from tests.utils import assert_close

METHODS = ["zoh", "bilinear", "euler"]


def _scipy(A, B, dt, method):
    n = A.shape[-1]
    Ad, Bd, *_ = cont2discrete((A.numpy(), B.numpy().reshape(n, -1), np.eye(n), np.zeros((n, 1))), dt,
                               method=method)
    return torch.from_numpy(Ad), torch.from_numpy(Bd)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("system", ["legs", "legt", "random", "singular"])
@pytest.mark.parametrize("dt", [1e-3, 0.05, 1.0])
def test_dense_matches_scipy(method, system, dt):
    g = torch.Generator().manual_seed(0)
    if system in ("legs", "legt"):
        A, B = hippo(system, 6)
    else:
        A = torch.randn(5, 5, generator=g, dtype=torch.float64)
        B = torch.randn(5, 2, generator=g, dtype=torch.float64)
        if system == "singular":
            A[:, 0] = 0.0
    Ab, Bb = discretize_dense(A, B, dt, method)
    Ad, Bd = _scipy(A, B, dt, method)
    assert_close(Ab, Ad, atol=1e-12, rtol=1e-10, name=f"{method} A_bar")
    assert_close(Bb.reshape(Bd.shape), Bd, atol=1e-12, rtol=1e-10, name=f"{method} B_bar")


@pytest.mark.parametrize("method", METHODS)
def test_per_channel_steps_broadcast(method):
    A, B = hippo("legs", 4)
    dt = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    Ab, Bb = discretize_dense(A.expand(3, 4, 4), B, dt, method)
    for h in range(3):
        want = discretize_dense(A, B, dt[h].item(), method)
        assert_close(Ab[h], want[0], atol=1e-13, name="A_bar per channel")
        assert_close(Bb[h], want[1], atol=1e-13, name="B_bar per channel")


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_equals_dense_on_a_diagonal_matrix(method):
    g = torch.Generator().manual_seed(1)
    A = torch.complex(-torch.rand(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g,
                                                                                        dtype=torch.float64))
    B = torch.randn(3, 4, generator=g, dtype=torch.float64).to(torch.complex128)
    dt = torch.tensor([0.01, 0.3, 2.0], dtype=torch.float64)
    Ab, Bb = discretize_diag(A, B, dt, method)
    Ad, Bd = discretize_dense(torch.diag_embed(A), B, dt, method)
    assert_close(torch.diag_embed(Ab), Ad, atol=1e-12, name="A_bar")
    assert_close(Bb, Bd, atol=1e-12, name="B_bar")


def test_zoh_diag_small_steps_are_accurate():
    A = torch.tensor([[-1e-9, -2.0]], dtype=torch.float64)
    _, Bb = discretize_diag(A, torch.ones_like(A), 1e-3, "zoh")
    assert_close(Bb, torch.tensor([[1e-3, (1 - np.exp(-2e-3)) / 2]], dtype=torch.float64), atol=1e-18, rtol=1e-12,
                 name="B_bar near A = 0")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_dplr_equals_dense_on_the_reconstructed_matrix(method, measure):
    Lambda, P, B, _ = dplr(measure, 8)
    dt = torch.tensor([0.02, 0.2], dtype=torch.float64)
    Lambda2, B2 = Lambda.expand(2, 8), B.expand(2, 8)
    Ab, Bb = discretize_dplr(Lambda2, P, B2, dt, method)
    Ad, Bd = discretize_dense(dplr_dense(Lambda2, P), B2, dt, method)
    assert_close(Ab, Ad, atol=1e-12, name="A_bar")
    assert_close(Bb, Bd, atol=1e-12, name="B_bar")


@pytest.mark.parametrize("method", METHODS)
def test_conj_sym_dplr_is_the_full_system(method):
    Lambda, P, B, _ = dplr("legs", 8, conj_sym=True)
    dt = torch.tensor([0.02, 0.2], dtype=torch.float64)
    Lambda2, B2 = Lambda.expand(2, 4), B.expand(2, 4)
    Ab, Bb = discretize_dplr(Lambda2, P, B2, dt, method, conj_sym=True)
    Lf, Pf, Bf = (torch.cat([t, t.conj()], -1) for t in (Lambda2, P, B2))
    Ad, Bd = discretize_dense(dplr_dense(Lf, Pf), Bf, dt, method)
    assert Ab.shape == (2, 8, 8)
    assert_close(Ab, Ad, atol=1e-12, name="A_bar")
    assert_close(Bb, Bd, atol=1e-12, name="B_bar")
    # The full system maps [x, conj(x)] to [y, conj(y)].
    assert_close(Ab[:, 4:, 4:], Ab[:, :4, :4].conj(), atol=1e-12, name="conjugate blocks")
    assert_close(Ab[:, 4:, :4], Ab[:, :4, 4:].conj(), atol=1e-12, name="coupling blocks")
    assert Ab[:, :4, 4:].abs().max() > 1e-3


def test_log_step_initialisation():
    g = torch.Generator().manual_seed(0)
    log_dt = init_log_dt(10000, 1e-3, 1e-1, generator=g, dtype=torch.float64)
    dt = log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    # Log-uniform: the median is the geometric mean of the range.
    assert abs(dt.median().log().item() - np.log(1e-2)) < 0.1
    assert torch.equal(init_log_dt(5, generator=torch.Generator().manual_seed(3)),
                       init_log_dt(5, generator=torch.Generator().manual_seed(3)))


def test_gradients_flow_through_log_step():
    A, B = hippo("legs", 4)
    log_dt = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: discretize_dense(A, B, s.exp(), "zoh"), (log_dt,))
    assert torch.autograd.gradcheck(lambda s: discretize_dense(A, B, s.exp(), "bilinear"), (log_dt,))


def test_bad_arguments():
    A, B = hippo("legs", 4)
    for bad in (0.0, -0.1, torch.tensor([0.1, -1.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="must be positive"):
            discretize_dense(A, B, bad, "zoh")
        with pytest.raises(ValueError, match="must be positive"):
            discretize_diag(torch.diagonal(A), B, bad, "zoh")
    with pytest.raises(ValueError, match="unknown discretisation method 'rk4'"):
        discretize_dense(A, B, 0.1, "rk4")
    with pytest.raises(ValueError, match=r"\(\.\.\., N, N\)"):
        discretize_dense(A[:3], B, 0.1)
    with pytest.raises(ValueError, match="must be real"):
        discretize_dense(A, B, torch.tensor(0.1j), "zoh")
    with pytest.raises(ValueError, match="dt_min"):
        init_log_dt(3, 0.1, 0.01)
