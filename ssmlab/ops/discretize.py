"""Discretisation of continuous-time linear systems ``x' = A x + B u`` with step ``dt``.

Methods (``x_k = A_bar x_{k-1} + B_bar u_k``):

* ``zoh`` (zero-order hold): ``A_bar = exp(dt A)``, ``B_bar = A^{-1} (exp(dt A) - I) B``
  (computed through the exponential of an augmented matrix for dense systems, so a
  singular A is fine);
* ``bilinear`` (Tustin): ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^{-1} dt B``;
* ``euler`` (forward Euler): ``A_bar = I + dt A``, ``B_bar = dt B``.

Three structures of A:

* :func:`discretize_dense`: A (..., N, N), B (..., N) or (..., N, M) (a B with fewer
  dimensions than A is a vector);
* :func:`discretize_diag`: A (..., N), real or complex (S4D, S5, LRU-style systems);
* :func:`discretize_dplr`: ``A = diag(Lambda) - P^T conj(P)`` (S4), returned as dense
  matrices; its bilinear form uses the Woodbury identity, as in S4's recurrent mode
  (arXiv 2111.00396), so only an (r, r) system is solved. With ``conj_sym`` the
  arguments are one half of a conjugate-symmetric spectrum and the full system
  (:func:`conj_sym_full`) is discretised.

``dt`` broadcasts against A's leading (channel) dimensions: a scalar, or a tensor
of shape ``A.shape[:-2]`` (dense) / ``A.shape[:-1]`` (diagonal). It must be positive.
:func:`init_log_dt` draws the learnable log-step of S4 and S4D; :func:`init_dt_bias` the bias of
Mamba's input-dependent step.
"""

from __future__ import annotations

import math

import torch

METHODS = ("zoh", "bilinear", "euler")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown discretisation method {method!r}; expected one of {', '.join(METHODS)}")


def _check_dt(dt) -> torch.Tensor:
    # A Python number becomes float64, so that it is not rounded to float32 on the way.
    dt = dt if isinstance(dt, torch.Tensor) else torch.tensor(dt, dtype=torch.float64)
    if dt.is_complex():
        raise ValueError("the discretisation step dt must be real")
    if not bool((dt > 0).all()):
        raise ValueError(f"the discretisation step dt must be positive, got min {dt.min().item():g}")
    return dt


def init_log_dt(size: int, dt_min: float = 0.001, dt_max: float = 0.1, *, generator: torch.Generator | None = None,
                device=None, dtype=None) -> torch.Tensor:
    """Log-step (size,) drawn log-uniformly in [log dt_min, log dt_max], as S4 and S4D initialise
    their learnable step (arXiv 2111.00396, 2206.11893); use ``dt = exp(log_dt)``."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(size, generator=generator, dtype=torch.float64)
    return (u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).to(device=device,
                                                                              dtype=dtype or torch.get_default_dtype())


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """``y`` with ``softplus(y) == x`` for ``x > 0``."""
    return x + torch.log(-torch.expm1(-x))


def init_dt_bias(size: int, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, *, device=None,
                 dtype=None) -> torch.Tensor:
    """Bias (size,) whose softplus is log-uniform in [dt_min, dt_max], floored at ``dt_init_floor``: Mamba's
    initialisation of its step, ``dt = softplus(... + bias)`` (arXiv 2312.00752; Mamba-2, arXiv 2405.21060)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(size, device=device, dtype=torch.float64)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    return inverse_softplus(dt).to(dtype or torch.get_default_dtype())


def discretize_dense(A: torch.Tensor, B: torch.Tensor, dt, method: str = "zoh"):
    """Discretise a dense system: A (..., N, N), B (..., N) or (..., N, M) -> (A_bar, B_bar)."""
    _check_method(method)
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must have shape (..., N, N), got {tuple(A.shape)}")
    n = A.shape[-1]
    # B with fewer dimensions than A is a vector (..., N); otherwise an input matrix (..., N, M).
    vector = B.dim() < A.dim()
    Bm = B[..., None] if vector else B
    if Bm.shape[-2] != n:
        raise ValueError(f"B must have shape (..., {n}) or (..., {n}, M), got {tuple(B.shape)}")
    dt = _check_dt(dt).to(A.device, A.real.dtype if A.is_complex() else A.dtype)[..., None, None]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    if method == "zoh":
        m = Bm.shape[-1]
        lead = torch.broadcast_shapes(A.shape[:-2], Bm.shape[:-2], dt.shape[:-2])
        top = torch.cat([A.expand(*lead, n, n), Bm.expand(*lead, n, m)], dim=-1)
        aug = torch.cat([top, torch.zeros(*lead, m, n + m, dtype=top.dtype, device=A.device)], dim=-2)
        e = torch.linalg.matrix_exp(aug * dt)
        Ab, Bb = e[..., :n, :n], e[..., :n, n:]
    elif method == "bilinear":
        left = eye - dt / 2 * A
        Ab = torch.linalg.solve(left, eye + dt / 2 * A)
        Bb = torch.linalg.solve(left, dt * Bm)
    else:
        Ab, Bb = eye + dt * A, dt * Bm
    return Ab, (Bb[..., 0] if vector else Bb)


def discretize_diag(A: torch.Tensor, B: torch.Tensor, dt, method: str = "zoh"):
    """Discretise a diagonal system: A (..., N), B broadcastable to A -> (A_bar, B_bar), elementwise.

    ``dt`` is a number, one step per channel (shape ``A.shape[:-1]``) or one per state (shape ``A.shape``).
    """
    _check_method(method)
    dt = _check_dt(dt).to(A.device)
    # A step per state (dt shaped like A) or per channel (dt shaped like A.shape[:-1]) or one for all.
    if dt.dim() and dt.shape != A.shape:
        dt = dt[..., None]
    dtA, dtB = A * dt, B * dt
    if method == "zoh":
        # (exp(dt A) - 1) / A = dt * expm1(dt A) / (dt A), written to keep precision for small dt A.
        return torch.exp(dtA), torch.expm1(dtA) / dtA * dtB
    if method == "bilinear":
        return (1 + dtA / 2) / (1 - dtA / 2), dtB / (1 - dtA / 2)
    return 1 + dtA, dtB


def dplr_dense(Lambda: torch.Tensor, P: torch.Tensor, Q: torch.Tensor | None = None) -> torch.Tensor:
    """The matrix ``diag(Lambda) - P^T conj(Q)`` (..., N, N) of a DPLR system; Q defaults to P.
    Lambda (..., N); P, Q (..., r, N)."""
    Q = P if Q is None else Q
    return torch.diag_embed(Lambda) - P.transpose(-1, -2) @ Q.conj()


def conj_sym_full(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The full conjugate spectrum from one half: each tensor (..., M) -> (..., 2M), ``[t, conj(t)]``.

    S4 (arXiv 2111.00396) stores M = N/2 of the N eigenvalues of its state matrix, one of each
    conjugate pair, with the matching entries of P, B and C. The system they stand for is
    ``A = diag(Lambda_f) - P_f^T conj(P_f)`` with ``Lambda_f = [Lambda, conj(Lambda)]`` and
    ``P_f = [P, conj(P)]`` (likewise B_f, C_f); it is real in the original basis, and its
    rank-r term couples the two halves, so unlike a diagonal system its output is not twice
    the real part of the half system's.
    """
    return tuple(torch.cat([t, t.conj()], dim=-1) for t in tensors)


def discretize_dplr(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, dt, method: str = "bilinear",
                    Q: torch.Tensor | None = None, *, conj_sym: bool = False):
    """Discretise ``A = diag(Lambda) - P^T conj(Q)``: Lambda (..., N), P, Q (..., r, N), B (..., N).

    Returns dense ``(A_bar (..., N, N), B_bar (..., N))``. For ``bilinear`` the inverse
    ``(I - dt/2 A)^{-1}`` comes from the Woodbury identity with the diagonal
    ``D = (2/dt - Lambda)^{-1}``: ``(2/dt)^{-1}``-scaled ``D - D P^T (I + conj(Q) D P^T)^{-1} conj(Q) D``;
    other methods go through the dense matrix.

    With ``conj_sym`` the arguments hold one half (M) of a conjugate-symmetric spectrum and the
    result is that of the full system of :func:`conj_sym_full`: A_bar (..., 2M, 2M), B_bar (..., 2M),
    states ordered ``[x, conj(x)]``.
    """
    _check_method(method)
    Q = P if Q is None else Q
    if conj_sym:
        Lambda, P, Q, B = conj_sym_full(Lambda, P, Q, B)
    if method != "bilinear":
        return discretize_dense(dplr_dense(Lambda, P, Q), B, dt, method)
    dt = _check_dt(dt).to(Lambda.device)
    dt_c = (dt[..., None] if dt.dim() else dt).to(Lambda.dtype)
    n = Lambda.shape[-1]
    A = dplr_dense(Lambda, P, Q)
    d = 1 / (2 / dt_c - Lambda)  # (..., N)
    Pt, Qc = P.transpose(-1, -2), Q.conj()  # (..., N, r), (..., r, N)
    r = P.shape[-2]
    small = torch.eye(r, dtype=Lambda.dtype, device=Lambda.device) + Qc @ (d[..., :, None] * Pt)
    # (2/dt I - A)^{-1} = D - D P^T (I + Q^* D P^T)^{-1} Q^* D
    inv = torch.diag_embed(d) - (d[..., :, None] * Pt) @ torch.linalg.solve(small, Qc * d[..., None, :])
    eye = torch.eye(n, dtype=Lambda.dtype, device=Lambda.device)
    Ab = inv @ (2 / dt_c[..., None] * eye + A) if dt.dim() else inv @ (2 / dt_c * eye + A)
    Bb = 2 * (inv @ B[..., None])[..., 0]
    return Ab, Bb
