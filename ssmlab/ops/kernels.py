"""Convolution kernels of discretised linear time-invariant SSMs.

A discrete SSM ``x_k = A_bar x_{k-1} + B_bar u_k``, ``y_k = C x_k`` is the
convolution ``y = K * u`` with ``K[k] = C A_bar^k B_bar``. Three ways to compute K
for channels (H,):

* :func:`ssm_kernel_dense`: unroll the recurrence (any A; the test oracle, and LSSL's form);
* :func:`ssm_kernel_diag`: diagonal A, a Vandermonde product (S4D, arXiv 2206.11893);
* :func:`ssm_kernel_dplr`: ``A = diag(Lambda) - P^T conj(Q)``, the truncated generating
  function evaluated at the L-th roots of unity through Cauchy kernels and the
  Woodbury identity, then an inverse FFT (S4, arXiv 2111.00396). It uses the
  bilinear discretisation, which that identity requires. With ``conj_sym`` it takes
  one half of a conjugate-symmetric spectrum, as S4 stores it, and sums over the
  full spectrum, as the official S4 code's Cauchy kernel does: the low-rank term
  couples the two halves, so the diagonal shortcut ``2 Re(half kernel)`` is wrong here.
"""

from __future__ import annotations

import math

import torch

from ssmlab.ops.discretize import _check_dt, conj_sym_full, discretize_diag, discretize_dplr


def _check_length(L) -> None:
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"kernel length L must be a positive int, got {L!r}")


def ssm_kernel_dense(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K[..., k] = C A_bar^k B_bar`` for k < L by unrolling: A_bar (..., N, N), B_bar and C (..., N) -> (..., L)."""
    _check_length(L)
    if A_bar.dim() < 2 or A_bar.shape[-1] != A_bar.shape[-2]:
        raise ValueError(f"A_bar must have shape (..., N, N), got {tuple(A_bar.shape)}")
    out = []
    v = B_bar
    for _ in range(L):
        out.append((C * v).sum(-1))
        v = (A_bar @ v[..., None])[..., 0]
    return torch.stack(out, dim=-1)


def ssm_kernel_diag(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt, L: int, *, method: str = "zoh",
                    conj_sym: bool = False) -> torch.Tensor:
    """Kernel of a diagonal SSM in Vandermonde form: ``K[h, k] = sum_n C[h,n] B_bar[h,n] A_bar[h,n]^k``.

    A, B, C (H, N), real or complex; dt (H,) or a number. With ``conj_sym`` the N states
    stand for N conjugate pairs and the kernel is ``2 Re(...)`` (S4D's halved spectrum);
    otherwise the sum itself is returned (real for a real system).
    """
    _check_length(L)
    if A.dim() != 2:
        raise ValueError(f"A must have shape (H, N), got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != A.shape:
            raise ValueError(f"{name} must have shape {tuple(A.shape)} like A, got {tuple(t.shape)}")
    A_bar, B_bar = discretize_diag(A, B, dt, method)
    k = torch.arange(L, device=A.device, dtype=A.real.dtype if A.is_complex() else A.dtype)
    if method == "zoh":
        dt_t = _check_dt(dt).to(A.device)
        log_a = A * (dt_t[..., None] if dt_t.dim() else dt_t)
    else:
        log_a = torch.log(A_bar.to(torch.promote_types(A_bar.dtype, torch.complex64)))
    powers = torch.exp(log_a[..., None] * k)  # (H, N, L)
    K = torch.einsum("hn,hnl->hl", C * B_bar, powers)
    if conj_sym:
        return 2 * K.real
    return K.real if not (A.is_complex() or B.is_complex() or C.is_complex()) else K


def dplr_c_tilde(Lambda, P, B, C, dt, L: int, *, Q=None, inverse: bool = False,
                 conj_sym: bool = False) -> torch.Tensor:
    """S4's ``C~ = (I - A_bar^L)^T C`` for a length-L kernel (or C from C~ with ``inverse``).

    S4 learns C~ directly; this converts between the two (A_bar is the bilinear
    discretisation, so ``A_bar^L`` is a dense matrix power, computed by squaring).
    With ``conj_sym`` the arguments are one half (M) of a conjugate-symmetric spectrum: the
    conversion uses the full system and returns the half (M) of its conjugate-symmetric result.
    """
    half = C.shape[-1]
    if conj_sym:
        (C,) = conj_sym_full(C)
    A_bar, _ = discretize_dplr(Lambda, P, B, dt, "bilinear", Q=Q, conj_sym=conj_sym)
    eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)
    M = (eye - torch.linalg.matrix_power(A_bar, L)).transpose(-1, -2)
    if inverse:
        out = torch.linalg.solve(M, C[..., None])[..., 0]
    else:
        out = (M @ C[..., None])[..., 0]
    return out[..., :half] if conj_sym else out


def ssm_kernel_dplr(Lambda, P, B, C, dt, L: int, *, Q=None, c_tilde: bool = False,
                    conj_sym: bool = False) -> torch.Tensor:
    """Kernel (H, L) of ``A = diag(Lambda) - P^T conj(Q)`` with bilinear discretisation, by the
    Cauchy kernel at the roots of unity and an inverse FFT (S4, arXiv 2111.00396).

    Lambda, B, C (H, N) complex; P, Q (r, N) or (H, r, N) (Q defaults to P); dt (H,).
    ``c_tilde=True`` means C is already S4's C~ (see :func:`dplr_c_tilde`); otherwise it is
    converted here. With ``conj_sym`` the N states are one half of a conjugate-symmetric
    spectrum and the kernel (real) is that of the full 2N-state system
    ``diag([Lambda, conj Lambda]) - [P, conj P]^T conj([Q, conj Q])`` with B and C extended
    likewise, as in the official S4 code; otherwise it is the complex kernel
    ``C^T A_bar^k B_bar`` itself, whose imaginary part vanishes when the system is real in its
    original basis (``C = V^T C_real``).

    At a root of unity z the generating function is
    ``2/(1+z) C~^T (g(z) I - A)^{-1} B`` with ``g(z) = (2/dt)(1-z)/(1+z)``; the factor
    ``2/(1+z)`` is folded into the Cauchy denominators, ``2 / ((2/dt)(1-z) - (1+z) Lambda)``,
    so that z = -1 (even L) needs no special case. The roots of unity map to the imaginary
    axis, so the diagonal part must be strictly stable, ``Re(Lambda) < 0`` (true of HiPPO-LegS
    and LegT; not of FouT, whose normal part is skew-symmetric).
    """
    _check_length(L)
    if not bool((Lambda.real < 0).all()):
        raise ValueError("ssm_kernel_dplr needs Re(Lambda) < 0: the Cauchy kernel has poles on the imaginary "
                         "axis, where the roots of unity are mapped (use the dense kernel for such systems)")
    Q = P if Q is None else Q
    dt = _check_dt(dt).to(Lambda.device)
    if conj_sym:
        Lambda, P, Q, B, C = conj_sym_full(Lambda, P, Q, B, C)
    if not c_tilde:
        C = dplr_c_tilde(Lambda, P, B, C, dt, L, Q=Q)
    cdtype = torch.promote_types(Lambda.dtype, torch.complex64)
    rdtype = torch.float64 if cdtype == torch.complex128 else torch.float32
    z = torch.exp(-2j * math.pi / L * torch.arange(L, device=Lambda.device, dtype=rdtype)).to(cdtype)  # (L,)
    dt_c = (dt[..., None] if dt.dim() else dt).to(cdtype)[..., None]  # (H, 1, 1) or scalar
    # r[h, j, n] = 2 / ((2/dt)(1 - z_j) - (1 + z_j) Lambda[h, n])
    r = 2 / ((2 / dt_c) * (1 - z)[:, None] - (1 + z)[:, None] * Lambda[..., None, :])  # (H, L, N)
    channels = Lambda.shape[0]
    Pc = P.to(cdtype).expand(channels, *P.shape[-2:])  # (H, r, N)
    Qc = Q.to(cdtype).conj().expand(channels, *Q.shape[-2:])
    k_cb = torch.einsum("hn,hln,hn->hl", C, r, B)
    k_cp = torch.einsum("hn,hln,hrn->hlr", C, r, Pc)
    k_qp = torch.einsum("han,hln,hbn->hlab", Qc, r, Pc)
    k_qb = torch.einsum("han,hln,hn->hla", Qc, r, B)
    half = ((1 + z) / 2)[:, None]  # (L, 1)
    rank = Pc.shape[-2]
    small = torch.eye(rank, dtype=cdtype, device=Lambda.device) + half[..., None] * k_qp  # (H, L, r, r)
    correction = (k_cp[..., None, :] @ torch.linalg.solve(small, (half * k_qb)[..., None]))[..., 0, 0]
    K = torch.fft.ifft(k_cb - correction, dim=-1)  # (H, L)
    return K.real if conj_sym else K
