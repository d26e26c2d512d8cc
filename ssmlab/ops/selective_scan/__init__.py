"""Selective scan (S6), the input-dependent SSM of Mamba (arXiv 2312.00752).

For each channel d and state index n, with ``delta = softplus(delta + delta_bias)``
(or without softplus when ``delta_softplus=False``)::

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[g(d), n] u_t[d]
    y_t[d]    = sum_n C_t[g(d), n] h_t[d, n] + D[d] u_t[d]
    y_t[d]   *= silu(z_t[d])            (when z is given)

Shapes: u, delta, z (B, L, D); A (D, N), real; B, C (B, L, N) or (B, L, G, N), where
channel d reads group ``g(d) = d // (D / G)``; D, delta_bias (D,); state (B, D, N).
The exponential-of-step discretisation of A with ``delta * B`` for B is the one
Mamba uses (ZOH for A, Euler for B).

Computation is in float32 at least (float64 when ``u`` is float64), as in Mamba's
kernels; ``y`` has ``u``'s dtype, the state the computation dtype.

Backends: ``reference`` (the loop, the specification), ``torch`` (the default on the
CPU where ``numba`` is absent), ``numba`` (compiled CPU loops, available where Numba is
installed and then the default on the CPU; see ``numba.py``) and ``triton`` (Triton
kernels, the default on CUDA tensors; see ``triton.py``). ``torch`` runs chunk by
chunk, so the largest tensor it holds is one chunk (B, T, D, N), never (B, L, D, N);
its backward pass is written by hand and recomputes each chunk from the state saved at
the chunk's start, so training memory is O(B L D) plus a few chunks too (no double
backward).
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

selective_scan_op = Op("selective_scan")
selective_scan_step_op = Op("selective_scan_step")


def _check_bc(name, t, batch, length, channels, n_state=None):
    if getattr(t, "dim", lambda: 0)() == 3:
        check_tensor(name, t, (batch, length, n_state or "N"), allow_complex=False)
        return 1, t.shape[-1]
    check_tensor(name, t, (batch, length, "G", n_state or "N"), allow_complex=False)
    groups = t.shape[2]
    if channels % groups:
        raise ValueError(f"{name} has {groups} groups, which does not divide D={channels}")
    return groups, t.shape[-1]


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, *, step=False):
    """Validate the arguments of ``selective_scan`` (or of ``selective_scan_step`` when ``step``)."""
    if step:
        check_tensor("u", u, ("B", "D"), allow_complex=False)
        batch, channels = u.shape
        check_tensor("delta", delta, (batch, channels), allow_complex=False)
    else:
        check_tensor("u", u, ("B", "L", "D"), allow_complex=False)
        batch, length, channels = u.shape
        if length == 0:
            raise ValueError("selective_scan needs at least one position (L >= 1)")
        check_tensor("delta", delta, (batch, length, channels), allow_complex=False)
    check_tensor("A", A, (channels, "N"), allow_complex=False)
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if step:
            shape = (batch, n_state) if getattr(t, "dim", lambda: 0)() == 2 else (batch, "G", n_state)
            check_tensor(name, t, shape, allow_complex=False)
            if t.dim() == 3 and channels % t.shape[1]:
                raise ValueError(f"{name} has {t.shape[1]} groups, which does not divide D={channels}")
        else:
            _check_bc(name, t, batch, length, channels, n_state)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(name, t, (channels,), allow_complex=False)
    if z is not None:
        check_tensor("z", z, tuple(u.shape), allow_complex=False)
    if initial_state is not None:
        check_tensor("initial_state" if not step else "state", initial_state, (batch, channels, n_state),
                     allow_complex=False)


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                   initial_state=None, return_final_state: bool = False, backend: str | None = None):
    """Run the selective scan (S6) over a sequence.

    Args:
        u: (B, L, D) input.
        delta: (B, L, D) step sizes before ``delta_bias`` and softplus.
        A: (D, N) real state matrix (diagonal per channel; negative for a stable scan).
        B, C: (B, L, N), shared by all channels, or (B, L, G, N) with G dividing D.
        D: (D,) skip connection ``y += D * u``; none when None.
        z: (B, L, D) gate, ``y *= silu(z)``; none when None.
        delta_bias: (D,) added to ``delta``; none when None.
        delta_softplus: apply softplus to ``delta + delta_bias`` (Mamba does).
        initial_state: (B, D, N) state before the first position; zeros when None.
        return_final_state: also return the state after the last position.
        backend: "reference" or "torch"; see the module docstring.

    Returns:
        ``y`` (B, L, D) in ``u``'s dtype, or ``(y, final_state)`` with state (B, D, N).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    fn = selective_scan_op.resolve(backend, u.device)
    y, state = fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  initial_state=initial_state)
    return (y, state) if return_final_state else y


def selective_scan_step(u, delta, A, B, C, state, *, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                        backend: str | None = None):
    """One position of the selective scan, for generation: the arithmetic of one iteration of the reference loop.

    Args: as ``selective_scan`` without the length dim: u, delta, z (B, D); A (D, N);
    B, C (B, N) or (B, G, N); state (B, D, N), required. ``backend``: ``reference`` (that
    iteration; ``torch`` is the same function, one position having nothing to chunk) or
    ``numba`` (one compiled call, the default on the CPU where Numba is installed; see
    ``numba_step.py``).

    Returns:
        ``(y, new_state)``: y (B, D) in ``u``'s dtype, new_state (B, D, N).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias, state, step=True)
    fn = selective_scan_step_op.resolve(backend, u.device)
    return fn(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)


from ssmlab.ops.selective_scan import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.selective_scan import torch as _torch_backend  # noqa: E402,F401
from ssmlab.ops.selective_scan import numba as _numba_backend  # noqa: E402,F401
from ssmlab.ops.selective_scan import numba_step as _numba_step  # noqa: E402

selective_scan_step_op.register("reference", priority=0)(_reference.step)
selective_scan_step_op.register("torch", priority=1)(_reference.step)
selective_scan_step_op.register("numba", priority=20, available=_numba_step.numba_available)(
    _numba_step.selective_scan_step_numba)

selective_scan_op.register_triton(
    lambda: importlib.import_module("ssmlab.ops.selective_scan.triton").selective_scan_triton)
