"""The WKV operator of RWKV-4 (Peng et al., arXiv 2305.13048, eq. 14), numerically stable.

An attention-like weighted average of past values with a per-channel
exponential time decay ``w > 0`` and a bonus ``u`` for the current token::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

The sums overflow for large keys, so the state keeps them as a triple
``(a, b, p)``: numerator ``a e^p``, denominator ``b e^p`` and ``p`` the largest
exponent so far (the running-max trick of the official CUDA kernel). The empty
state is ``(0, 0, EMPTY_EXPONENT)``. One position updates it as::

    wkv_t = (e^{p - q} a + e^{u + k_t - q} v_t) / (e^{p - q} b + e^{u + k_t - q}),  q = max(p, u + k_t)
    p'    = max(p - w, k_t)
    a'    = e^{p - w - p'} a + e^{k_t - p'} v_t,   b' = e^{p - w - p'} b + e^{k_t - p'}

The exponents are detached from autograd: the sums they represent do not depend
on them, so gradients through ``a`` and ``b`` alone are exact.

Shapes: k, v (B, L, D); w, u (D,); each of a, b, p (B, D). Everything is
computed in the promoted dtype of the inputs (the RWKV mixer passes float32 or
wider).

Backends: ``reference`` (the recurrence above, one position at a time; the
specification) and ``torch`` (default): a recurrence inside chunks of about
``sqrt L`` positions, run for all chunks at once, then one across chunks, so
``O(sqrt L)`` sequential steps.
"""

from __future__ import annotations

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

wkv_op = Op("wkv")

# The "minus infinity" exponent of the empty state, as in the official code; finite so that
# differences of exponents never produce NaN.
EMPTY_EXPONENT = -1e30


def check_inputs(k, v, w, u, state=None, *, step=False):
    """Validate the arguments of ``wkv`` (or of ``wkv_step`` when ``step``)."""
    check_tensor("k", k, ("B", "D") if step else ("B", "L", "D"), allow_complex=False)
    if not step and k.shape[1] == 0:
        raise ValueError("wkv needs at least one position (L >= 1)")
    check_tensor("v", v, tuple(k.shape), allow_complex=False)
    batch, dim = k.shape[0], k.shape[-1]
    check_tensor("w", w, (dim,), allow_complex=False)
    check_tensor("u", u, (dim,), allow_complex=False)
    if state is not None:
        label = "state" if step else "initial_state"
        if not isinstance(state, (tuple, list)) or len(state) != 3:
            raise ValueError(f"{label} must be a triple (a, b, p) of (B, D) tensors, got {type(state).__name__}")
        for name, t in zip("abp", state):
            check_tensor(f"{label}[{name}]", t, (batch, dim), allow_complex=False)


def wkv(k, v, w, u, *, initial_state=None, return_final_state: bool = False, backend: str | None = None):
    """Run the RWKV-4 WKV operator over a sequence.

    Args:
        k, v: (B, L, D) keys and values.
        w: (D,) decay per step, positive (RWKV-4's ``exp(time_decay)``).
        u: (D,) bonus of the current token (RWKV-4's ``time_first``).
        initial_state: ``(a, b, p)``, each (B, D), summarising the positions before; empty when None.
        return_final_state: also return the state after the last position.
        backend: "reference" or "torch"; see the module docstring.

    Returns:
        ``wkv`` (B, L, D), or ``(wkv, (a, b, p))`` with the state after the last position.
    """
    check_inputs(k, v, w, u, initial_state)
    fn = wkv_op.resolve(backend, k.device)
    out, state = fn(k, v, w, u, initial_state=None if initial_state is None else tuple(initial_state))
    return (out, state) if return_final_state else out


def wkv_step(k, v, w, u, state):
    """One position of WKV, for generation: one iteration of the reference loop.

    Args: k, v (B, D); w, u (D,); state ``(a, b, p)``, each (B, D), required.

    Returns:
        ``(wkv, (a, b, p))``: wkv (B, D) and the state after this position.
    """
    check_inputs(k, v, w, u, state, step=True)
    return _reference.step(k, v, w, u, tuple(state))


from ssmlab.ops.wkv import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.wkv import torch as _torch_backend  # noqa: E402,F401
