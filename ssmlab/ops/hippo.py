"""HiPPO: continuous-time state matrices that memorise a signal's history online.

``hippo(measure, N)`` returns ``(A, B)`` of the linear ODE ``x'(t) = A x(t) + B u(t)``
whose state holds the coefficients of the projection of the input's history
onto N orthogonal polynomials or functions under a measure (Gu et al.,
arXiv 2008.07669; the time-invariant forms and their structure as used by S4,
arXiv 2111.00396 and 2206.12037):

* ``legs`` (scaled Legendre, the whole history with uniform weight; the
  time-varying ODE is ``x' = (A x + B u) / t``, S4 uses the time-invariant A)::

      A[n, k] = -sqrt(2n+1) sqrt(2k+1)  (n > k),   -(n+1)  (n = k),   0  (n < k)
      B[n]    = sqrt(2n+1)

* ``legt`` (translated Legendre, a sliding window; normalised as in the LMU and S4,
  halved so that the window has unit length in S4's timescale convention)::

      A[n, k] = -(1/2) sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)^(n-k)),   B[n] = (1/2) sqrt(2n+1)

* ``lagt`` (translated Laguerre, exponentially decaying weight)::

      A = I/2 - tril(ones),   B = ones

* ``fout`` (translated Fourier, a sliding window of sines and cosines; state order
  cos 0, sin 0, cos 1, sin 1, ...)::

      A = (pi k [[0, -1], [1, 0]] on each pair (cos k, sin k)) - B B^T,   B = (1, 0, sqrt 2, 0, sqrt 2, 0, ...)

Each of these A is normal plus low rank (NPLR): ``A = S - P P^T`` with ``S``
normal (a skew-symmetric matrix plus a multiple of I). :func:`nplr` gives the
low-rank ``P`` and :func:`dplr` diagonalises ``S`` by a unitary ``V``, giving
``A = V (diag(Lambda) - P~ P~^*) V^*``: the diagonal-plus-low-rank form of S4.
"""

from __future__ import annotations

import math

import torch

MEASURES = ("legs", "legt", "lagt", "fout")


def _check(measure: str, N: int) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown HiPPO measure {measure!r}; expected one of {', '.join(MEASURES)}")
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"HiPPO state size N must be a positive int, got {N!r}")
    if measure == "fout" and N % 2:
        raise ValueError(f"the fout measure pairs sines and cosines: N must be even, got {N}")


def hippo(measure: str, N: int, *, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO matrices ``A`` (N, N) and ``B`` (N,) of ``measure`` ("legs" | "legt" | "lagt" | "fout")."""
    _check(measure, N)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    row, col = n[:, None], n[None, :]
    if measure == "legs":
        A = -torch.where(row > col, r[:, None] * r[None, :], torch.zeros(()))
        A = A - torch.diag(n + 1)
        B = r.clone()
    elif measure == "legt":
        sign = torch.where(row >= col, torch.ones(()), (-1.0) ** (row - col))
        A = -0.5 * r[:, None] * r[None, :] * sign
        B = 0.5 * r
    elif measure == "lagt":
        A = 0.5 * torch.eye(N, dtype=torch.float64) - torch.ones(N, N, dtype=torch.float64).tril()
        B = torch.ones(N, dtype=torch.float64)
    else:  # fout
        freqs = torch.arange(N // 2, dtype=torch.float64)
        # State order (cos 0, sin 0, cos 1, sin 1, ...); sin 0 is identically zero and decouples.
        d = torch.stack([torch.zeros(N // 2, dtype=torch.float64), freqs], dim=-1).reshape(-1)[1:]
        A = math.pi * (torch.diag(d, -1) - torch.diag(d, 1))
        B = torch.zeros(N, dtype=torch.float64)
        B[0::2] = math.sqrt(2)
        B[0] = 1.0
        A = A - B[:, None] * B[None, :]
    return A.to(dtype), B.to(dtype)


def hippo_legs(N: int, *, dtype: torch.dtype = torch.float64):
    """Shorthand for ``hippo("legs", N)``."""
    return hippo("legs", N, dtype=dtype)


def nplr(measure: str, N: int, *, dtype: torch.dtype = torch.float64):
    """Normal-plus-low-rank form: ``(A, B, P)`` with ``A + P^T P`` normal.

    ``P`` is (rank, N): rank 1 for legs, lagt and fout; rank 2 for legt (one term for
    the even and one for the odd polynomials).
    """
    A, B = hippo(measure, N, dtype=torch.float64)
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        P = torch.sqrt(n + 0.5)[None]
    elif measure == "legt":
        half = torch.sqrt(n + 0.5)
        P = torch.stack([torch.where(n % 2 == 0, half, 0.0), torch.where(n % 2 == 1, half, 0.0)])
    elif measure == "lagt":
        P = torch.full((1, N), math.sqrt(0.5), dtype=torch.float64)
    else:
        P = B[None].clone()
    return A.to(dtype), B.to(dtype), P.to(dtype)


def dplr(measure: str, N: int, *, rank_dtype: torch.dtype = torch.complex128, conj_sym: bool = False):
    """Diagonal-plus-low-rank form of a HiPPO matrix, as S4 uses it (arXiv 2111.00396).

    Returns ``(Lambda, P, B, V)``: eigenvalues ``Lambda`` (M,), low-rank factor ``P`` (rank, M)
    and input ``B`` (M,) in the eigenbasis, and the unitary ``V`` (N, M), such that with the
    full spectrum (``conj_sym=False``, M = N)::

        A == V @ (diag(Lambda) - P^T conj(P)) @ V^H      and      B_original == V @ B

    With ``conj_sym=True`` only the eigenvalues with positive imaginary part are kept
    (M = N/2), with the matching entries of P and B and columns of V; the dropped half are
    their complex conjugates. The full system is recovered by appending the conjugates,
    ``Lambda_f = [Lambda, conj(Lambda)]`` and likewise P_f, B_f and V_f = [V, conj(V)]::

        A == V_f @ (diag(Lambda_f) - P_f^T conj(P_f)) @ V_f^H      and      B_original == V_f @ B_f

    For a diagonal system (S4D, P = 0) the two halves are independent and the output is twice
    the real part of the half system's; with P != 0 the low-rank term couples the halves, so
    DPLR kernels and recurrences must use the full system (``conj_sym`` in
    :func:`ssmlab.ops.ssm_kernel_dplr` and :func:`ssmlab.ops.discretize_dplr`), as the
    official S4 code does.
    """
    A, B, P = nplr(measure, N)
    S = A + P.T @ P
    shift = torch.diagonal(S).mean()
    if not torch.allclose(S - shift * torch.eye(N, dtype=S.dtype), -(S - shift * torch.eye(N, dtype=S.dtype)).T,
                          atol=1e-9 * max(1.0, S.abs().max().item())):
        raise RuntimeError(f"{measure}: A + P^T P is not a skew-symmetric matrix plus a multiple of I")
    # S - shift I is skew-symmetric, so -i (S - shift I) is Hermitian: eigh gives a unitary V.
    eigvals, V = torch.linalg.eigh(-1j * (S - shift * torch.eye(N, dtype=S.dtype)).to(torch.complex128))
    Lambda = shift + 1j * eigvals
    if conj_sym:
        if N % 2:
            raise ValueError(f"conj_sym needs an even N, got {N}")
        keep = torch.argsort(Lambda.imag, descending=True)[: N // 2]
        Lambda, V = Lambda[keep], V[:, keep]
    Vh = V.conj().T
    P_eig = (Vh @ P.to(torch.complex128).T).T  # (rank, M)
    B_eig = Vh @ B.to(torch.complex128)
    return Lambda.to(rank_dtype), P_eig.to(rank_dtype), B_eig.to(rank_dtype), V.to(rank_dtype)


def s4d_legs(N: int) -> torch.Tensor:
    """S4D-LegS initialisation (arXiv 2206.11893): the eigenvalues of the normal part of
    HiPPO-LegS with positive imaginary part, (N/2,) complex, real parts all -1/2."""
    return dplr("legs", N, conj_sym=True)[0]
