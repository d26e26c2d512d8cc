"""Structured state space duality (SSD), the sequence mixer of Mamba-2 (arXiv 2405.21060).

Each head h has a scalar decay ``A[h] < 0`` (A is a scalar times the identity) and
a state (P, N); heads share B and C within groups, head h reading group
``g(h) = h // (H / G)``::

    h_t = exp(dt_t[h] A[h]) h_{t-1} + dt_t[h] x_t[h] B_t[g(h)]^T     (P, N)
    y_t[h] = h_t C_t[g(h)] + D[h] x_t[h]

Shapes: x (B, L, H, P); dt (B, L, H), already positive (softplus and bias are the
mixer's business); A (H,); B, C (B, L, G, N); D (H,) or (H, P); state (B, H, P, N).

Backends, all computing the same function:

* ``reference``: the recurrence, one position at a time (the specification);
* ``quadratic``: the attention-like form ``y = (L o C B^T) (dt x)`` with the
  1-semiseparable decay mask ``L[t, s] = exp(sum_{s<r<=t} dt_r A)``, O(L^2);
* ``torch`` (default; also named ``chunked``): Mamba-2's block decomposition, one chunk
  of ``chunk_size`` positions after another: the quadratic form inside the chunk, the
  entering state's contribution, the state after it; any chunk size and any L.
  Memory O(B L H P + B H (T^2 + P N)) for chunk size T without autograd, and
  O(B L H (T + P + P N / T)) kept for the backward pass.
* ``triton`` (default on CUDA tensors when Triton is importable): the same block
  decomposition as Triton kernels, forward and backward (:mod:`ssmlab.ops.ssd.triton`);
  on the CPU only by name, under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_heads, check_tensor
from ssmlab.ops._dispatch import Op

ssd_op = Op("ssd")


def check_inputs(x, dt, A, B, C, D=None, initial_state=None, *, step=False):
    heads, head_dim, lead = check_heads("ssd", "x", x, "P", step=step)
    batch = lead[0]
    check_tensor("dt", dt, lead + (heads,), allow_complex=False)
    check_tensor("A", A, (heads,), allow_complex=False)
    check_tensor("B", B, lead + ("G", "N"), allow_complex=False)
    groups, n_state = B.shape[-2], B.shape[-1]
    check_tensor("C", C, lead + (groups, n_state), allow_complex=False)
    if heads % groups:
        raise ValueError(f"B and C have {groups} groups, which does not divide the {heads} heads")
    if D is not None:
        check_tensor("D", D, (heads,) if D.dim() == 1 else (heads, head_dim), allow_complex=False)
    if initial_state is not None:
        check_tensor("initial_state" if not step else "state", initial_state, (batch, heads, head_dim, n_state),
                     allow_complex=False)


def ssd(x, dt, A, B, C, *, chunk_size: int = 64, D=None, initial_state=None, return_final_state: bool = False,
        backend: str | None = None):
    """Run SSD over a sequence.

    Args:
        x: (B, L, H, P) input, H heads of P channels.
        dt: (B, L, H) step sizes, expected >= 0 and used as given: softplus and a bias
            are the mixer's business (not checked, as that would need the values).
        A: (H,) real decay rate per head, negative for a stable scan.
        B, C: (B, L, G, N), G groups dividing H; head h reads group h // (H / G).
        chunk_size: positions per chunk for the ``torch`` backend (any L works; on the CPU it runs at most
            ``ssmlab.ops.ssd.torch.CPU_CHUNK`` = 64, which measured fastest there and changes only the rounding);
            the ``triton`` backend rounds it up to a power of two in [16, 256].
        D: (H,) or (H, P) skip connection ``y += D x``; none when None.
        initial_state: (B, H, P, N) state before the first position; zeros when None.
        return_final_state: also return the state after the last position.
        backend: "reference", "torch" (also "chunked"), "quadratic" or "triton"; see the module docstring.

    Returns:
        ``y`` (B, L, H, P) in ``x``'s dtype, or ``(y, final_state)`` with state
        (B, H, P, N) in the computation dtype (float32 at least).
    """
    check_inputs(x, dt, A, B, C, D, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = ssd_op.resolve(backend, x.device)
    y, state = fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state)
    return (y, state) if return_final_state else y


def ssd_step(x, dt, A, B, C, state, *, D=None):
    """One position of SSD, for generation: the arithmetic of one iteration of the reference loop.

    Args: x (B, H, P); dt (B, H); A (H,); B, C (B, G, N); state (B, H, P, N), required;
    D (H,) or (H, P) or None.

    Returns:
        ``(y, new_state)``: y (B, H, P) in ``x``'s dtype, new_state (B, H, P, N) in the
        computation dtype (float32 at least), as from ``ssd``.
    """
    check_inputs(x, dt, A, B, C, D, state, step=True)
    y, new_state = _reference.step(x, dt, A, B, C, state, D)
    return y.to(x.dtype), new_state


from ssmlab.ops.ssd import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.ssd import torch as _torch_backend  # noqa: E402,F401
ssd_op.register_triton(lambda: importlib.import_module("ssmlab.ops.ssd.triton").ssd_triton)
