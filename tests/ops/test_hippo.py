import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.special import eval_legendre

from ssmlab.ops import MEASURES, dplr, hippo, nplr, s4d_legs
from tests.utils import assert_close


@pytest.mark.parametrize("N", [1, 2, 5, 64])
def test_legs_closed_form(N):
    A, B = hippo("legs", N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1), abs=1e-14)
        for k in range(N):
            want = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k] == pytest.approx(want, abs=1e-12), (n, k)


def test_other_measures_closed_forms():
    A, B = hippo("lagt", 4)
    assert torch.equal(A, torch.tensor([[-0.5, 0, 0, 0], [-1, -0.5, 0, 0], [-1, -1, -0.5, 0], [-1, -1, -1, -0.5]],
                                       dtype=torch.float64))
    assert torch.equal(B, torch.ones(4, dtype=torch.float64))
    A, B = hippo("legt", 3)
    r = torch.sqrt(torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64))
    assert A[0, 1] == pytest.approx(0.5 * r[0] * r[1])  # above the diagonal: -(1/2) r r (-1)^(n-k)
    assert A[2, 0] == pytest.approx(-0.5 * r[2] * r[0]) and B[1] == pytest.approx(0.5 * r[1])
    A, B = hippo("fout", 6)
    assert torch.equal(B, torch.tensor([1, 0, math.sqrt(2), 0, math.sqrt(2), 0], dtype=torch.float64))
    assert A[3, 2] == pytest.approx(math.pi - 0.0) and A[2, 3] == pytest.approx(-math.pi)
    assert A[5, 4] == pytest.approx(2 * math.pi)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [2, 8, 64])
def test_nplr_normal_part_and_dplr_reconstruction(measure, N):
    A, B, P = nplr(measure, N)
    S = A + P.T @ P
    shift = torch.diagonal(S).mean()
    skew = S - shift * torch.eye(N, dtype=S.dtype)
    assert_close(skew, -skew.T, atol=1e-10, name="A + P^T P minus a multiple of I is skew-symmetric")
    Lambda, Pt, Bt, V = dplr(measure, N)
    assert_close(V.conj().T @ V, torch.eye(N, dtype=V.dtype), atol=1e-12, name="V is unitary")
    rebuilt = V @ (torch.diag(Lambda) - Pt.T @ Pt.conj()) @ V.conj().T
    assert (rebuilt - A).abs().max() / A.abs().max() < 1e-6
    assert_close(rebuilt.real, A, atol=1e-9 * A.abs().max().item(), name="reconstructed A")
    assert_close(V @ Bt, B.to(V.dtype), atol=1e-10, name="B")


def test_conjugate_symmetric_half_and_s4d_legs():
    Lambda_full = dplr("legs", 16)[0]
    Lambda, P, B, V = dplr("legs", 16, conj_sym=True)
    assert Lambda.shape == (8,) and P.shape == (1, 8) and V.shape == (16, 8)
    assert (Lambda.imag > 0).all()
    # The kept half together with its conjugates is the whole spectrum.
    both = torch.cat([Lambda, Lambda.conj()])
    assert_close(torch.sort(both.imag).values, torch.sort(Lambda_full.imag).values, atol=1e-10, name="spectrum")
    assert_close(s4d_legs(16), Lambda, atol=0, name="S4D-LegS")
    assert_close(Lambda.real, torch.full((8,), -0.5, dtype=torch.float64), atol=1e-12, name="real parts")


@pytest.mark.parametrize("N", [4, 16, 64])
def test_conjugate_half_with_its_conjugates_is_the_whole_system(N):
    """S4 stores half of the spectrum: appending the conjugates of Lambda, P, B and V's columns gives
    back HiPPO-LegS exactly, while the half system alone (``2 Re`` of it) does not."""
    A, B_real = hippo("legs", N)
    Lambda, P, B, V = dplr("legs", N, conj_sym=True)
    Lf, Pf, Bf, Vf = (torch.cat([t, t.conj()], -1) for t in (Lambda, P, B, V))
    rebuilt = Vf @ (torch.diag(Lf) - Pf.T @ Pf.conj()) @ Vf.conj().T
    assert_close(rebuilt, A.to(rebuilt.dtype), atol=1e-10 * N, name="full system")
    assert_close(Vf @ Bf, B_real.to(Bf.dtype), atol=1e-10 * N, name="B")
    half = 2 * (V @ (torch.diag(Lambda) - P.T @ P.conj()) @ V.conj().T).real
    assert (half - A).abs().max() > 0.1


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_legs_projection_recovers_a_polynomial(degree):
    """Run HiPPO-LegS online, x'(t) = (A x + B f(t)) / t, over [0, 1] and reconstruct f on [0, 1]
    from the final state: f(s) = sum_n x_n sqrt(2n+1) P_n(2s - 1) for a polynomial of degree < N."""
    N = 8
    A, B = (t.numpy() for t in hippo("legs", N))
    coeffs = np.random.default_rng(degree).normal(size=degree + 1)
    f = np.polynomial.Polynomial(coeffs)
    # In log-time tau = log t the ODE has no singularity: dx/dtau = A x + B f(e^tau).
    x0 = np.zeros(N)
    x0[0] = f(0.0)
    sol = solve_ivp(lambda tau, x: A @ x + B * f(np.exp(tau)), (math.log(1e-9), 0.0), x0, method="DOP853",
                    rtol=1e-11, atol=1e-12)
    x = sol.y[:, -1]
    s = np.linspace(0, 1, 101)
    rebuilt = sum(x[n] * math.sqrt(2 * n + 1) * eval_legendre(n, 2 * s - 1) for n in range(N))
    assert np.abs(rebuilt - f(s)).max() < 1e-6
    assert np.abs(x[degree + 1:]).max() < 1e-6  # nothing beyond the polynomial's degree


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown HiPPO measure 'legendre'.*legs, legt, lagt, fout"):
        hippo("legendre", 4)
    with pytest.raises(ValueError, match="positive int"):
        hippo("legs", 0)
    with pytest.raises(ValueError, match="even"):
        hippo("fout", 5)
    with pytest.raises(ValueError, match="even"):
        dplr("legs", 5, conj_sym=True)
