import pytest
import torch

from ssmlab.ops import (discretize_dense, dplr, dplr_c_tilde, dplr_dense, hippo, ssm_kernel_dense,
                        ssm_kernel_diag, ssm_kernel_dplr)
from tests.utils import assert_close

KERNEL_LENGTHS = [1, 2, 63, 64, 65, 1000, 4096]


def _diag_system(H=2, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=torch.float64) - 0.05,
                      torch.randn(H, N, generator=g, dtype=torch.float64) * 3)
    B = torch.randn(H, N, generator=g, dtype=torch.complex128)
    C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    dt = torch.tensor([0.01, 0.1], dtype=torch.float64)[:H]
    return A, B, C, dt


def test_dense_kernel_is_c_a_power_b():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5
    B, C = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    K = ssm_kernel_dense(A, B, C, 5)
    for k in range(5):
        assert K[k] == pytest.approx((C @ torch.linalg.matrix_power(A, k) @ B).item(), abs=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("L", KERNEL_LENGTHS)
def test_diag_kernel_equals_unrolled_recurrence(method, L):
    A, B, C, dt = _diag_system()
    Ab, Bb = discretize_dense(torch.diag_embed(A), B, dt, method)
    want = ssm_kernel_dense(Ab, Bb, C, L)
    assert_close(ssm_kernel_diag(A, B, C, dt, L, method=method), want, atol=1e-10, rtol=1e-9, name="diag kernel")
    assert_close(ssm_kernel_diag(A, B, C, dt, L, method=method, conj_sym=True), 2 * want.real, atol=1e-10,
                 rtol=1e-9, name="conj-sym kernel")


def test_diag_kernel_real_system():
    A = -torch.rand(2, 3, dtype=torch.float64)
    B, C = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    K = ssm_kernel_diag(A, B, C, 0.1, 50)
    assert not K.is_complex()
    Ab, Bb = discretize_dense(torch.diag_embed(A), B, 0.1, "zoh")
    assert_close(K, ssm_kernel_dense(Ab, Bb, C, 50), atol=1e-12, name="real diagonal kernel")


@pytest.mark.parametrize("measure", ["legs", "legt"])
@pytest.mark.parametrize("L", KERNEL_LENGTHS)
def test_dplr_kernel_equals_unrolled_recurrence(measure, L):
    N, H = 8, 2
    Lambda, P, B, V = dplr(measure, N)
    g = torch.Generator().manual_seed(L)
    C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    dt = torch.tensor([0.003, 0.05], dtype=torch.float64)
    Lambda2, B2 = Lambda.expand(H, N), B.expand(H, N)
    Ab, Bb = discretize_dense(dplr_dense(Lambda2, P), B2, dt, "bilinear")
    want = ssm_kernel_dense(Ab, Bb, C, L)
    got = ssm_kernel_dplr(Lambda2, P, B2, C, dt, L)
    assert_close(got, want, atol=1e-9 * max(1.0, want.abs().max().item()), name=f"{measure} DPLR kernel")


def test_dplr_kernel_with_per_channel_low_rank_terms():
    Lambda, P, B, _ = dplr("legs", 6)
    g = torch.Generator().manual_seed(0)
    P2 = P.expand(2, 1, 6) * torch.tensor([1.0, 0.5], dtype=torch.float64)[:, None, None]
    C = torch.randn(2, 6, generator=g, dtype=torch.complex128)
    dt = torch.tensor([0.05, 0.2], dtype=torch.float64)
    got = ssm_kernel_dplr(Lambda.expand(2, 6), P2, B.expand(2, 6), C, dt, 40)
    Ab, Bb = discretize_dense(dplr_dense(Lambda.expand(2, 6), P2), B.expand(2, 6), dt, "bilinear")
    assert_close(got, ssm_kernel_dense(Ab, Bb, C, 40), atol=1e-10, name="per-channel P")


def test_dplr_kernel_of_the_real_hippo_system():
    """In the original basis S4's system is real: C = V^T C_real gives a real kernel, equal to the
    dense kernel of the real HiPPO matrix."""
    N, L = 16, 300
    A, B_real = hippo("legs", N)
    Lambda, P, B, V = dplr("legs", N)
    C_real = torch.randn(1, N, dtype=torch.float64)
    C = (V.T @ C_real.T.to(V.dtype)).T
    got = ssm_kernel_dplr(Lambda[None], P, B[None], C, torch.tensor([0.05], dtype=torch.float64), L)
    Ab, Bb = discretize_dense(A, B_real, 0.05, "bilinear")
    want = ssm_kernel_dense(Ab, Bb, C_real[0], L)
    assert_close(got[0].real, want, atol=1e-10, name="kernel")
    assert got.imag.abs().max() < 1e-10


def _full(*tensors):
    return tuple(torch.cat([t, t.conj()], -1) for t in tensors)


def test_c_tilde_round_trip_and_conj_sym():
    """With conj_sym the kernel is that of the full system over the conjugate spectrum (as in the
    official S4 code), not twice the real part of the half system's."""
    Lambda, P, B, _ = dplr("legs", 8, conj_sym=True)
    C = torch.randn(1, 4, dtype=torch.complex128)
    dt = torch.tensor([0.1], dtype=torch.float64)
    Ct = dplr_c_tilde(Lambda[None], P, B[None], C, dt, 64, conj_sym=True)
    assert_close(dplr_c_tilde(Lambda[None], P, B[None], Ct, dt, 64, inverse=True, conj_sym=True), C, atol=1e-10,
                 name="C round trip")
    K = ssm_kernel_dplr(Lambda[None], P, B[None], Ct, dt, 64, c_tilde=True, conj_sym=True)
    Lf, Pf, Bf, Cf = _full(Lambda[None], P, B[None], C)
    Ab, Bb = discretize_dense(dplr_dense(Lf, Pf), Bf, dt, "bilinear")
    want = ssm_kernel_dense(Ab, Bb, Cf, 64)
    assert want.imag.abs().max() < 1e-12
    assert_close(K, want.real, atol=1e-10, name="conj-sym DPLR kernel")
    half = 2 * ssm_kernel_dense(*discretize_dense(dplr_dense(Lambda[None], P), B[None], dt, "bilinear"), C, 64).real
    assert (K - half).abs().max() > 1e-3  # the diagonal shortcut does not hold for DPLR


@pytest.mark.parametrize("N", [4, 16, 64])
@pytest.mark.parametrize("L", [1, 64, 1000])
def test_conj_sym_dplr_kernel_equals_the_real_hippo_system(N, L):
    """The half spectrum with its conjugates is HiPPO-LegS: C = V_f^T C_real gives the real system's kernel."""
    A, B_real = hippo("legs", N)
    Lambda, P, B, V = dplr("legs", N, conj_sym=True)
    g = torch.Generator().manual_seed(N)
    C_real = torch.randn(N, generator=g, dtype=torch.float64)
    C = (V.T @ C_real.to(V.dtype))[None]  # (1, N/2); its conjugates complete V_f^T C_real
    dt = torch.tensor([0.02], dtype=torch.float64)
    got = ssm_kernel_dplr(Lambda[None], P, B[None], C, dt, L, conj_sym=True)
    want = ssm_kernel_dense(*discretize_dense(A, B_real, dt[0], "bilinear"), C_real, L)
    assert_close(got[0], want, atol=1e-9 * max(1.0, want.abs().max().item()), name=f"HiPPO-LegS kernel N={N}")


def test_kernel_gradcheck():
    A, B, C, dt = _diag_system(H=1, N=2)
    log_dt = dt.log().requires_grad_(True)
    A.requires_grad_(True)
    C.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c, s: ssm_kernel_diag(a, B, c, s.exp(), 6, conj_sym=True),
                                     (A, C, log_dt))
    Lambda, P, Bd, _ = dplr("legs", 4, conj_sym=True)
    Lambda = Lambda[None].clone().requires_grad_(True)
    P = P.clone().requires_grad_(True)
    Cd = torch.randn(1, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda lam, p, c: ssm_kernel_dplr(lam, p, Bd[None], c, torch.tensor([0.1], dtype=torch.float64), 6,
                                          c_tilde=True, conj_sym=True), (Lambda, P, Cd))


def test_bad_arguments():
    A, B, C, dt = _diag_system()
    with pytest.raises(ValueError, match="positive int"):
        ssm_kernel_diag(A, B, C, dt, 0)
    with pytest.raises(ValueError, match=r"C must have shape \(2, 4\)"):
        ssm_kernel_diag(A, B, C[:, :3], dt, 8)
    with pytest.raises(ValueError, match="must be positive"):
        ssm_kernel_diag(A, B, C, -dt, 8)
    with pytest.raises(ValueError, match="must be positive"):
        ssm_kernel_dplr(*dplr("legs", 4)[:3], torch.ones(1, 4, dtype=torch.complex128), 0.0, 8)
    Lambda, P, Bf, _ = dplr("fout", 4)
    with pytest.raises(ValueError, match=r"Re\(Lambda\) < 0"):
        ssm_kernel_dplr(Lambda[None], P, Bf[None], torch.ones(1, 4, dtype=torch.complex128), 0.1, 8)
