import pytest
import torch

import ssmlab
from ssmlab.ops import dplr, fft_conv, hippo, ssm_kernel_dplr
from tests.utils import assert_close


def test_hippo_legs_initialisation_and_sharing():
    s4 = ssmlab.create_mixer("s4", 8, d_state=16, n_ssm=2, dtype=torch.float64)
    lam, p, b, c, dt = s4._system()
    Lambda, P, B, _ = dplr("legs", 16, conj_sym=True)
    assert_close(lam[0], Lambda, atol=1e-12, name="Lambda")
    assert_close(p[3], P, atol=1e-12, name="P")
    assert_close(b[7], B, atol=1e-12, name="B")
    assert lam.shape == (8, 8) and s4.log_A_real.shape == (2, 8)
    assert getattr(s4.log_dt, "_optim") == {"weight_decay": 0.0, "lr": 0.001}


def test_bidirectional_kernel_reads_the_future():
    torch.manual_seed(0)
    s4 = ssmlab.create_mixer("s4", 4, d_state=8, bidirectional=True, dtype=torch.float64)
    x = torch.randn(1, 10, 4, dtype=torch.float64)
    lam, p, b, c, dt = s4._system()
    k_f = ssm_kernel_dplr(lam, p, b, c[0], dt, 10, conj_sym=True)
    k_b = ssm_kernel_dplr(lam, p, b, c[1], dt, 10, conj_sym=True)
    want = fft_conv(x, torch.cat([k_f, k_b], -1), D=s4.D, bidirectional=True, backend="reference")
    assert_close(s4(x), s4.output(want), atol=1e-10, name="bidirectional S4")
    x2 = x.clone()
    x2[:, -1] += 1
    assert (s4(x2)[:, 0] - s4(x)[:, 0]).abs().max() > 1e-8


def test_bad_options():
    with pytest.raises(ValueError, match="even"):
        ssmlab.create_mixer("s4", 8, d_state=7)
    with pytest.raises(ValueError, match="n_ssm"):
        ssmlab.create_mixer("s4", 8, n_ssm=3)


def _full_system(mixer):
    """The dense continuous system (A (H, N, N), B (H, N), C (H, N), dt (H,)) over the full conjugate
    spectrum that the mixer's parameters describe, built here from them independently of ssmlab.ops."""
    lam, p, b, c, dt = mixer._system()  # (H, M), (H, r, M), (H, M), (n, H, M), (H,)
    lam_f, p_f, b_f, c_f = (torch.cat([t, t.conj()], -1) for t in (lam, p, b, c[0]))
    A = torch.diag_embed(lam_f) - torch.einsum("hri,hrj->hij", p_f, p_f.conj())
    return A, b_f, c_f, dt


def _bilinear(A, B, dt):
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    left = eye - dt[:, None, None] / 2 * A
    A_bar = torch.linalg.solve(left, eye + dt[:, None, None] / 2 * A)
    return A_bar, torch.linalg.solve(left, (dt[:, None] * B)[..., None])[..., 0]


def _perturb(mixer, seed):
    """Move (Lambda, P, B, dt) away from the initialisation, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("log_A_real", "A_imag", "P", "B", "log_dt"):
            t = getattr(mixer, name)
            t.add_(0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype) * t.abs().mean())


@pytest.mark.parametrize("name", ["s4", "liquid-s4"])
@pytest.mark.parametrize("N", [4, 16, 64])
@pytest.mark.parametrize("L", [1, 64, 1000])
def test_kernel_is_that_of_the_dense_system_over_the_full_spectrum(name, N, L):
    """The layer's impulse response (output stage and D removed) is ``C_f A_bar^k B_bar`` of the dense
    bilinear system ``A = diag(Lambda_f) - P_f P_f^*`` over the full conjugate spectrum."""
    torch.manual_seed(N + L)
    mixer = ssmlab.create_mixer(name, 2, d_state=N, dtype=torch.float64)
    _perturb(mixer, N + L)
    mixer.output = torch.nn.Identity()
    with torch.no_grad():
        mixer.D.zero_()
    A, B, C, dt = _full_system(mixer)
    A_bar, B_bar = _bilinear(A, B, dt)
    want, v = [], B_bar
    for _ in range(L):
        want.append((C * v).sum(-1))
        v = (A_bar @ v[..., None])[..., 0]
    want = torch.stack(want, -1)  # (H, L)
    assert want.imag.abs().max() < 1e-9 * max(1.0, want.real.abs().max().item())
    impulse = torch.zeros(1, L, 2, dtype=torch.float64)
    impulse[:, 0] = 1.0
    got = mixer(impulse)[0].T  # (H, L)
    assert_close(got, want.real, atol=1e-9 * max(1.0, want.real.abs().max().item()), name=f"{name} kernel N={N}")


@pytest.mark.parametrize("name", ["s4", "liquid-s4"])
def test_state_is_the_kept_half_of_the_full_state(name):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer(name, 3, d_state=8, dtype=torch.float64)
    _perturb(mixer, 1)
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    _, state = mixer(x, return_state=True)
    A, B, C, dt = _full_system(mixer)
    A_bar, B_bar = _bilinear(A, B, dt)
    h = torch.zeros(2, 3, 8, dtype=torch.complex128)
    u = mixer._ssm_input(x, None)
    for t in range(11):
        h = (A_bar @ h[..., None])[..., 0] + B_bar * u[:, t, :, None]
    assert_close(h[..., 4:], h[..., :4].conj(), atol=1e-12, name="conjugate symmetry of the full state")
    assert_close(state["ssm"], h[..., :4], atol=1e-10, name="final state")


@pytest.mark.parametrize("N", [4, 16, 64])
def test_initial_dense_system_is_hippo_legs(N):
    """At initialisation the full system is HiPPO-LegS (arXiv 2008.07669) in the unitary eigenbasis V_f."""
    mixer = ssmlab.create_mixer("s4", 2, d_state=N, dtype=torch.float64)
    A, B, _, _ = _full_system(mixer)
    V = dplr("legs", N, conj_sym=True)[3]
    V_f = torch.cat([V, V.conj()], -1)  # (N, N)
    A_hippo, B_hippo = hippo("legs", N)
    rebuilt = V_f @ A[1] @ V_f.conj().T
    assert_close(rebuilt, A_hippo.to(rebuilt.dtype), atol=1e-10 * N, name="V_f A V_f^* == HiPPO-LegS A")
    assert_close(V_f @ B[1], B_hippo.to(B.dtype), atol=1e-10 * N, name="V_f B == HiPPO-LegS B")
    if N <= 16:
        # HiPPO-LegS is triangular with diagonal -(n+1); its eigenvalues are ill-conditioned, hence the tolerance.
        eig = torch.linalg.eigvals(A[0])
        assert_close(torch.sort(eig.real).values, -torch.arange(N, 0, -1, dtype=torch.float64), atol=1e-3,
                     name="eigenvalues -1 .. -N")
