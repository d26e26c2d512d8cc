"""Convolution kernels of discretised linear time-invariant SSMs.

A discrete SSM ``x_k = A_bar x_{k-1} + B_bar u_k``, ``y_k = C x_k`` is the
convolution ``y = K * u`` with ``K[k] = C A_bar^k B_bar``. Three ways to compute K
for channels (H,):

* :func:`ssm_kernel_dense`: unroll the recurrence (any A; the test oracle, and LSSL's form);
* :func:`ssm_kernel_diag`: diagonal A, a Vandermonde product (S4D, arXiv 2206.11893), or
  :func:`ssm_kernel_diag_discrete` for a system already discretised (DSS, Mega's EMA);
* :func:`ssm_kernel_dplr`: ``A = diag(Lambda) - P^T conj(Q)``, the truncated generating
  function evaluated at the L-th roots of unity through Cauchy kernels and the
  Woodbury identity, then an inverse FFT (S4, arXiv 2111.00396). It uses the
  bilinear discretisation, which that identity requires. With ``conj_sym`` it takes
  one half of a conjugate-symmetric spectrum, as S4 stores it, and sums over the
  full spectrum, as the official S4 code's Cauchy kernel does: the low-rank term
  couples the two halves, so the diagonal shortcut ``2 Re(half kernel)`` is wrong here.

A layer that computes its output as such a convolution and also continues from a state or returns
one adds what the state contributes: :func:`diagonal_state_terms` for a diagonal system (in closed
form), :func:`dense_state_terms` for a dense or DPLR one (by its recurrence).
"""

from __future__ import annotations

import math

import torch

from ssmlab.ops._checks import check_values
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
    otherwise the sum itself is returned (real for a real system). The system is discretised
    by :func:`~ssmlab.ops.discretize.discretize_diag`, then :func:`ssm_kernel_diag_discrete`
    takes the powers.
    """
    _check_length(L)
    if A.dim() != 2:
        raise ValueError(f"A must have shape (H, N), got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != A.shape:
            raise ValueError(f"{name} must have shape {tuple(A.shape)} like A, got {tuple(t.shape)}")
    A_bar, B_bar = discretize_diag(A, B, dt, method)
    if method == "zoh":
        dt_t = _check_dt(dt).to(A.device)
        log_a = A * (dt_t[..., None] if dt_t.dim() else dt_t)
    else:
        log_a = torch.log(A_bar.to(torch.promote_types(A_bar.dtype, torch.complex64)))
    K = ssm_kernel_diag_discrete(log_a, B_bar, C, L, conj_sym=conj_sym)
    return K if A.is_complex() or B.is_complex() or C.is_complex() else K.real


def ssm_kernel_diag_discrete(log_A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int, *,
                             conj_sym: bool = False) -> torch.Tensor:
    """Kernel (H, L) of a discretised diagonal SSM: ``K[h, k] = sum_n C[h,n] B_bar[h,n] exp(k log_A_bar[h,n])``.

    log_A_bar (the log of the diagonal of A_bar), B_bar and C (H, N), real or complex. With
    ``conj_sym`` the N states stand for N conjugate pairs and the kernel is ``2 Re(...)``;
    otherwise the sum itself (complex for a complex system). The systems that are not the
    zero-order hold or bilinear transform of :func:`ssm_kernel_diag` call it directly: DSS's
    (arXiv 2203.14343) and Mega's damped EMA (arXiv 2209.10655).
    """
    _check_length(L)
    k = torch.arange(L, device=log_A_bar.device, dtype=log_A_bar.real.dtype)
    powers = torch.exp(log_A_bar[..., None] * k)  # (H, N, L)
    K = torch.einsum("hn,hnl->hl", C * B_bar, powers)
    return 2 * K.real if conj_sym else K


def diagonal_state_terms(x, log_A_bar, B_bar, C, h0, return_state: bool, scale: float = 2.0):
    """What a state adds to a diagonal SSM computed as a convolution.

    The system is ``h_t = exp(log_A_bar) h_{t-1} + B_bar u_t``, ``y_t = scale * Re(C h_t)`` per
    channel, with log_A_bar, B_bar, C (H, M) complex (scale 2 for a conjugate-symmetric halved
    spectrum), x (B, L, H). Returns the free response of the initial state ``h0`` (B, H, M) to
    add to the output, ``scale Re(C A_bar^(t+1) h0)`` (B, L, H), or None without ``h0``; and the
    state after the last position, ``A_bar^L h0 + sum_s A_bar^(L-1-s) B_bar u_s`` (B, H, M), when
    ``return_state``, else None.
    """
    if h0 is None and not return_state:
        return None, None
    length = x.shape[1]
    powers = torch.exp(log_A_bar[..., None] * torch.arange(length + 1, device=x.device))  # (H, M, L+1)
    extra = None
    if h0 is not None:
        extra = scale * torch.einsum("hm,bhm,hml->blh", C, h0, powers[..., 1:]).real.to(x.dtype)
    h = None
    if return_state:
        weights = powers[..., :length].flip(-1) * B_bar[..., None]  # (H, M, L)
        h = torch.einsum("blh,hml->bhm", x.to(weights.dtype), weights)
        if h0 is not None:
            h = h + powers[..., length] * h0
    return extra, h


def apply_transition(A_bar: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``A_bar h`` for a state h (B, H, M): A_bar (H, M, M), or (H, M, 2M) acting on ``[h, conj(h)]``
    (the first M rows of a conjugate-symmetric system over 2M states, as S4 keeps its state)."""
    if A_bar.shape[-1] != h.shape[-1]:
        h = torch.cat([h, h.conj()], dim=-1)
    return (A_bar @ h[..., None])[..., 0]


def dense_state_terms(x, A_bar, B_bar, C, h0, return_state: bool, scale: float = 2.0):
    """What a state adds to an SSM with a dense transition computed as a convolution.

    The system is ``h_t = A_bar h_{t-1} + B_bar u_t`` with B_bar and C (H, M), A_bar (H, M, M),
    or (H, M, 2M) for the kept half of a conjugate-symmetric system (A_bar then acts on
    ``[h, conj(h)]``, see :func:`apply_transition`), and ``y_t = scale * Re(C h_t)``; x (B, L, H).
    Returns the free response of ``h0`` (B, H, M) to add to the output (B, L, H), or None without
    ``h0``; and the state after the last position when ``return_state``, else None. It runs the
    recurrence position by position: it serves streaming and chunked inference, not training on
    whole sequences.
    """
    h = torch.zeros(x.shape[0], *B_bar.shape, dtype=A_bar.dtype, device=x.device) if h0 is None else h0
    free, responses = h0, []
    for u_t in x.unbind(1):
        h = apply_transition(A_bar, h) + B_bar * u_t[..., None].to(B_bar.dtype)
        if h0 is not None:
            free = apply_transition(A_bar, free)
            responses.append(free)
    extra = None
    if h0 is not None:
        extra = scale * torch.einsum("hm,blhm->blh", C, torch.stack(responses, 1)).real.to(x.dtype)
    return extra, (h if return_state else None)


def dplr_c_tilde(Lambda, P, B, C, dt, L: int, *, Q=None, inverse: bool = False,
                 conj_sym: bool = False) -> torch.Tensor:
    """S4's ``C~ = (I - A_bar^L)^T C`` for a length-L kernel (or C from C~ with ``inverse``).

    S4 learns C~ directly; this converts between the two (A_bar is the bilinear
    discretisation, so ``A_bar^L`` is a dense matrix power, computed by squaring; for
    ``L <= n``, the state size, ``C^T A_bar^L`` is taken by L vector-matrix products instead).
    With ``conj_sym`` the arguments are one half (M) of a conjugate-symmetric spectrum: the
    conversion uses the full system and returns the half (M) of its conjugate-symmetric result.
    """
    half = C.shape[-1]
    if conj_sym:
        (C,) = conj_sym_full(C)
    A_bar, _ = discretize_dplr(Lambda, P, B, dt, "bilinear", Q=Q, conj_sym=conj_sym)
    n = A_bar.shape[-1]
    if not inverse and L <= n:
        # C^T A_bar^L by L vector-matrix products, L n^2 work per channel against the squarings'
        # log2(L) n^3: far cheaper for the short sequences that small models train on.
        row = C[..., None, :]  # (H, 1, n)
        for _ in range(L):
            row = row @ A_bar
        out = C - row[..., 0, :]
    else:
        eye = torch.eye(n, dtype=A_bar.dtype, device=A_bar.device)
        M = (eye - torch.linalg.matrix_power(A_bar, L)).transpose(-1, -2)
        out = torch.linalg.solve(M, C[..., None])[..., 0] if inverse else (M @ C[..., None])[..., 0]
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
    check_values(Lambda.real < 0, "ssm_kernel_dplr needs Re(Lambda) < 0: the Cauchy kernel has poles on the "
                 "imaginary axis, where the roots of unity are mapped (use the dense kernel for such systems)")
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
