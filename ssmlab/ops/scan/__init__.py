"""Linear recurrence scan ``h_t = a_t * h_{t-1} + b_t`` (elementwise, real or complex).

``linear_scan(a, b)`` with ``a``, ``b`` of shape (B, L, ...) returns ``h`` (B, L, ...);
``initial_state`` (B, ...) is ``h_{-1}`` (zeros by default). This is the diagonal
recurrence behind S5 (arXiv 2208.04933), LRU (arXiv 2303.06349) and, with
input-dependent ``a``, the selective scan.

Backends:

* ``reference``: the sequential loop (the specification).
* ``associative``: a parallel (Hillis-Steele) scan of the associative operator
  ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)`` in ceil(log2 L) vectorised steps.
* ``torch`` (default; also named ``chunked``): a two-level scan. All chunks of ``chunk_size`` (16)
  positions are swept side by side from a zero state, the carry between chunks is
  scanned the same way (recursively), then every chunk is swept again from the
  state entering it. The work is O(L) and the sequential steps about
  2 * chunk * log_chunk(L); its backward pass is the same scan run backwards in time
  over the adjoint, written by hand (no double backward). It multiplies, never
  divides by products of ``a``, so it is exact for ``a = 0``, stable for ``|a| < 1``
  over any length, and right for negative and complex ``a``.
"""

from __future__ import annotations

from ssmlab.ops._checks import check_sequence, check_tensor
from ssmlab.ops._dispatch import Op

linear_scan_op = Op("linear_scan")


def linear_scan(a, b, *, initial_state=None, return_final_state: bool = False, backend: str | None = None):
    """``h_t = a_t * h_{t-1} + b_t`` along dim 1, elementwise.

    Args:
        a: (B, L, ...) decays, real or complex, of the same shape as ``b``. A decay
            shared over batch or time is passed as an expanded view
            (``lam.expand_as(b)``), which costs no memory.
        b: (B, L, ...) inputs, real or complex.
        initial_state: (B, ...) the state ``h_{-1}``; zeros when None.
        return_final_state: also return ``h_{L-1}`` (B, ...).
        backend: "reference", "torch" (also "chunked") or "associative"; see the module docstring.

    Returns:
        ``h`` (B, L, ...) in the promoted dtype of ``a``, ``b`` and ``initial_state``,
        or ``(h, h[:, -1])`` when ``return_final_state``.
    """
    check_sequence("b", b)
    check_tensor("a", a, tuple(b.shape))
    if b.shape[1] == 0:
        raise ValueError("linear_scan needs at least one position (L >= 1)")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (b.shape[0],) + tuple(b.shape[2:]))
    fn = linear_scan_op.resolve(backend, b.device)
    h = fn(a, b, initial_state)
    return (h, h[:, -1]) if return_final_state else h


from ssmlab.ops.scan import reference as _reference  # noqa: E402,F401  (registers the backend)
from ssmlab.ops.scan import torch as _torch_backend  # noqa: E402,F401
