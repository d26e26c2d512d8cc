"""The Mamba-3 recurrence (arXiv 2603.15569): exponential-trapezoidal, rotary, SISO or MIMO.

Each head keeps a state ``h`` of shape (P, N). The exponential-trapezoidal rule
of the paper discretises the SSM with a data-dependent trapezoid
weight ``lambda_t`` in [0, 1], so that each update also uses the previous
position's input::

    alpha_t = exp(log_alpha_t)                      (log_alpha_t = dt_t A_t <= 0)
    beta_t  = (1 - lambda_t) dt_t alpha_t
    gamma_t = lambda_t dt_t
    h_t = alpha_t h_{t-1} + beta_t sum_r x_{t-1,r} B_{t-1,r}^T + gamma_t sum_r x_{t,r} B_{t,r}^T   (P, N)
    y_{t,r} = h_t C_{t,r}                                                                          (P,)

``lambda = 1`` is Mamba-2's exponential-Euler step. The complex-valued
(rotating) state of the paper is realised, as in the paper and the official
code, by rotating B and C with data-dependent cumulative angles
``phi_t = phi_{t-1} + theta_t`` (kept modulo 2 pi): S <= N/2 pairs of state
dimensions of ``B_t`` and ``C_t`` are rotated by ``phi_t``; the others pass
through. ``rotary="interleaved"`` pairs dimensions (2i, 2i+1), the official
SISO kernels' layout; ``rotary="halves"`` pairs (i, i + N/2), the official MIMO
kernels' layout.

SISO is rank R = 1: x (B, L, H, P), B and C (B, L, G, N). MIMO gives x, B and C
a rank dimension R (x (B, L, R, H, P), B, C (B, L, R, G, N)): the state is
written by the sum of R outer products and read R times, y (B, L, R, H, P).
Groups G of B and C are shared by H / G consecutive heads. The mixer adds the
biases before and the skip ``D x``, gate and rank contraction after this op.

The state (``Mamba3State``) holds what the next position needs: the angles
``angle`` (B, H, S), ``ssm`` = h (B, H, P, N) and the previous position's rotated
``prev_B`` (B, R, H, N) and ``prev_x`` (B, R, H, P), for its beta term; SISO
states keep R = 1. The official code's (angle, ssm, k, v) states in this
layout, ``ssm`` as (headdim, d_state).

Backends, computing the same function:

* ``reference``: the recurrence, one position at a time (the specification);
* ``torch`` (default): chunked like SSD (arXiv 2405.21060). Unrolled, input s
  reaches h_t (t >= s) as ``exp(G_t - G_s) gamma_s`` and, through the next
  position's beta term when t > s, as ``exp(G_t - G_{s+1}) beta_{s+1}
  = exp(G_t - G_s) (1 - lambda_{s+1}) dt_{s+1}`` (``G`` the cumulative
  log_alpha). So the intra-chunk mask is the sum of two decayed terms::

      M_ts = exp(G_t - G_s) (gamma_s + [s < t] (1 - lambda_{s+1}) dt_{s+1}),   s <= t

  and the state carried between chunks is h plus the pending beta term of the
  chunk's last position, which the next chunk's first position completes; at
  the end of the sequence that term is zero, so the final state is h itself.
  An initial state enters as ``h_0 + (1 - lambda_0) dt_0 sum_r prev_x prev_B^T``.
  Every exponent is a decay over a span of positions (<= 0). Work O(L T R^2 (N + P))
  for chunk size T, any L.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

mamba3_op = Op("mamba3")

ROTARY_LAYOUTS = ("interleaved", "halves")


class Mamba3State(NamedTuple):
    """The state of ``mamba3`` after a position (see the module docstring)."""

    angle: Tensor  # (B, H, S) cumulative rotation angles, in [0, 2 pi)
    ssm: Tensor  # (B, H, P, N)
    prev_B: Tensor  # (B, R, H, N) the last position's rotated B, per head
    prev_x: Tensor  # (B, R, H, P) the last position's x


def _ranked(x, B, C, *, step: bool):
    """x, B, C with a rank dimension (inserted for SISO) and whether it was inserted."""
    lead = 1 if step else 2
    siso = isinstance(x, Tensor) and x.dim() == lead + 2
    if siso:
        return x.unsqueeze(lead), *(t.unsqueeze(lead) if isinstance(t, Tensor) else t for t in (B, C)), True
    return x, B, C, False


def check_inputs(x, dt, log_alpha, B, C, trap, theta, rotary, state, *, step: bool):
    """Validate ranked inputs: x (lead, R, H, P), B, C (lead, R, G, N), dt/log_alpha/trap (lead, H)."""
    seq = () if step else ("L",)
    check_tensor("x", x, ("B",) + seq + ("R", "H", "P"), allow_complex=False)
    lead = tuple(x.shape[:len(seq) + 1])
    if not step and x.shape[1] == 0:
        raise ValueError("mamba3 needs at least one position (L >= 1)")
    rank, heads, head_dim = x.shape[-3:]
    check_tensor("B", B, lead + (rank, "G", "N"), allow_complex=False)
    groups, state_dim = B.shape[-2:]
    check_tensor("C", C, lead + (rank, groups, state_dim), allow_complex=False)
    if heads % groups:
        raise ValueError(f"mamba3: the number of heads H={heads} must be divisible by the groups of B and C "
                         f"G={groups}")
    for name, t in (("dt", dt), ("log_alpha", log_alpha), ("trap", trap)):
        check_tensor(name, t, lead + (heads,), allow_complex=False)
    if rotary not in ROTARY_LAYOUTS:
        raise ValueError(f"mamba3: rotary must be one of {ROTARY_LAYOUTS}, got {rotary!r}")
    pairs = 0
    if theta is not None:
        check_tensor("theta", theta, lead + (heads, "S"), allow_complex=False)
        pairs = theta.shape[-1]
        if 2 * pairs > state_dim or (rotary == "halves" and state_dim % 2):
            raise ValueError(f"mamba3: theta has S={pairs} angles but B and C have N={state_dim} state "
                             f"dimensions; S <= N // 2 (and N even for rotary='halves')")
    if state is not None:
        name = "state" if step else "initial_state"
        if not isinstance(state, tuple) or len(state) != 4:
            raise ValueError(f"mamba3: {name} must be a Mamba3State (angle, ssm, prev_B, prev_x), "
                             f"got {type(state).__name__}")
        batch = lead[0]
        for part, t, shape in zip(Mamba3State._fields, state,
                                  ((batch, heads, pairs), (batch, heads, head_dim, state_dim),
                                   (batch, rank, heads, state_dim), (batch, rank, heads, head_dim))):
            check_tensor(f"{name}.{part}", t, shape, allow_complex=False)


def mamba3(x, dt, log_alpha, B, C, trap, *, theta=None, rotary: str = "interleaved", initial_state=None,
           return_final_state: bool = False, chunk_size: int = 64, backend: str | None = None):
    """Run the Mamba-3 recurrence over a sequence.

    Args:
        x: (B, L, H, P) inputs (SISO), or (B, L, R, H, P) for MIMO of rank R.
        dt: (B, L, H) steps, >= 0.
        log_alpha: (B, L, H) log decays ``dt * A``, <= 0.
        B, C: (B, L, G, N), or (B, L, R, G, N) for MIMO; G divides H.
        trap: (B, L, H) trapezoid weights lambda in [0, 1] (1: exponential Euler).
        theta: (B, L, H, S) angle increments, S <= N // 2; None: no rotation (S = 0).
        rotary: "interleaved" (pairs (2i, 2i+1)) or "halves" (pairs (i, i + N/2)).
        initial_state: a ``Mamba3State`` before the first position; zeros when None.
        return_final_state: also return the state after the last position.
        chunk_size: positions per chunk of the ``torch`` backend (any L works).
        backend: "reference" or "torch"; see the module docstring.

    Returns:
        ``y`` shaped like ``x`` in its dtype, or ``(y, Mamba3State)`` with the state in the
        computation dtype (float32 at least); SISO states keep R = 1.
    """
    x, B, C, siso = _ranked(x, B, C, step=False)
    check_inputs(x, dt, log_alpha, B, C, trap, theta, rotary, initial_state, step=False)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if theta is None:
        theta = x.new_zeros(*dt.shape, 0)
    fn = mamba3_op.resolve(backend, x.device)
    y, state = fn(x, dt, log_alpha, B, C, trap, theta, rotary=rotary, chunk_size=chunk_size,
                  initial_state=None if initial_state is None else Mamba3State(*initial_state))
    if siso:
        y = y.squeeze(2)
    return (y, state) if return_final_state else y


def mamba3_step(x, dt, log_alpha, B, C, trap, state, *, theta=None, rotary: str = "interleaved"):
    """One position of the Mamba-3 recurrence, for generation: one iteration of the reference loop.

    Args: x (B, H, P) or (B, R, H, P); dt, log_alpha, trap (B, H); B, C (B, G, N) or (B, R, G, N);
    state a ``Mamba3State``, required; theta (B, H, S) or None; rotary as in ``mamba3``.

    Returns:
        ``(y, new_state)``: y shaped like ``x`` in its dtype, the state as from ``mamba3``.
    """
    x, B, C, siso = _ranked(x, B, C, step=True)
    check_inputs(x, dt, log_alpha, B, C, trap, theta, rotary, state, step=True)
    if theta is None:
        theta = x.new_zeros(*dt.shape, 0)
    y, new_state = _reference.step(x, dt, log_alpha, B, C, trap, theta, Mamba3State(*state), rotary)
    y = y.to(x.dtype)
    return (y.squeeze(1) if siso else y), new_state


from ssmlab.ops.mamba3 import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.mamba3 import torch as _torch_backend  # noqa: E402,F401
