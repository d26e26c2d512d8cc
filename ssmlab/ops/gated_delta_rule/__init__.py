"""The gated delta rule: DeltaNet (arXiv 2406.06484) and Gated DeltaNet (arXiv 2412.06464).

Each head keeps a matrix memory ``S`` of shape (K, V), keys to values, and at each
position forgets by a scalar ``alpha_t = exp(log_alpha_t)`` and writes the value
``v_t`` under the key ``k_t`` with strength ``beta_t``, replacing (rather than
adding to) what ``k_t`` retrieved before::

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      (K, V)
    o_t = scale * S_t^T q_t                                               (V,)

This is the issue's ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``
written for the transposed memory: the state is kept as (B, H, K, V), keys first,
the layout of flash-linear-attention's ``chunk_gated_delta_rule`` and its naive
references, so its states can be passed in and out unchanged. ``log_alpha=None``
means ``alpha = 1``, the delta rule of DeltaNet; a scalar per head and position is
Gated DeltaNet. ``scale`` defaults to ``K ** -0.5`` as in flash-linear-attention
(its ``scale=None``); pass ``scale=1.0`` for the unscaled rule of the papers'
equations. L2-normalising q and k, the short convolutions and the sigmoid on beta
belong to the mixers.

Shapes: q, k (B, L, H, K); v (B, L, H, V); beta, log_alpha (B, L, H); state (B, H, K, V).
``log_alpha`` is expected <= 0 and ``beta`` in [0, 2] for a stable memory (not
checked, as that would need the values).

Backends, computing the same function:

* ``reference``: the recurrence, one position at a time (the specification);
* ``torch`` (default): the chunkwise form with the WY/UT representation
  (arXiv 2406.06484 section 3; gated as in arXiv 2412.06464 section 3). Inside a
  chunk of C positions, with cumulative log-decays ``G_i = sum_{r<=i} log_alpha_r``
  and entering state ``S_0``, the corrected values
  ``u_i = beta_i (v_i - alpha_i S_{i-1}^T k_i)`` satisfy the unit lower triangular
  system ``(I + A) u = diag(beta) V - diag(beta exp(G)) K S_0`` with
  ``A_ij = beta_i (k_i . k_j) exp(G_i - G_j)`` for ``j < i``. One triangular solve
  per chunk (batched over a group of chunks) gives ``U`` and ``W`` with
  ``u = U - W S_0``; then a loop over the chunks (not the positions) carries the state:
  ``o = (Q exp(G)) S_0 + (Q K^T o exp(G_i - G_j))_{j<=i} u`` and
  ``S_C = exp(G_C) S_0 + (K exp(G_C - G))^T u``. Every exponent is a decay over a
  span of positions (<= 0), never its inverse, so nothing overflows. Work
  O(L C (K + V) + L K V), memory O(B H L C) besides the inputs; any chunk size, any L.
  Chunks are taken in groups of about 2^20 elements per intermediate, so that a
  short sequence is one group and a large batch stays in cache.
* ``triton``: the same chunkwise WY form as Triton kernels, forward and backward, in
  chunks of 64 (see ``ssmlab/ops/gated_delta_rule/triton.py``); chosen by default on
  CUDA tensors when Triton is importable, on the CPU only by name under
  ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_heads, check_keys_values, check_tensor, resolve_scale
from ssmlab.ops._dispatch import Op

gated_delta_rule_op = Op("gated_delta_rule")


def check_inputs(q, k, v, beta, log_alpha=None, initial_state=None, scale=None, *, step=False):
    heads, key_dim, lead = check_heads("gated_delta_rule", "q", q, "K", step=step)
    check_keys_values(k, v, initial_state, scale, lead, heads, key_dim, step=step)
    check_tensor("beta", beta, lead + (heads,), allow_complex=False)
    if log_alpha is not None:
        check_tensor("log_alpha", log_alpha, lead + (heads,), allow_complex=False)


def gated_delta_rule(q, k, v, beta, *, log_alpha=None, scale: float | None = None, initial_state=None,
                     return_final_state: bool = False, chunk_size: int = 64, backend: str | None = None):
    """Run the (gated) delta rule over a sequence.

    Args:
        q, k: (B, L, H, K) queries and keys (normalise k to unit length for the
            delta rule's "replace" reading; not done here).
        v: (B, L, H, V) values.
        beta: (B, L, H) writing strengths, in [0, 1] (or [0, 2]).
        log_alpha: (B, L, H) log forget gates, <= 0; None means alpha = 1 (DeltaNet).
        scale: multiplies q; ``K ** -0.5`` when None, as in flash-linear-attention.
        initial_state: (B, H, K, V) memory before the first position; zeros when None.
        return_final_state: also return the memory after the last position.
        chunk_size: positions per chunk of the ``torch`` backend (any L works).
        backend: "reference", "torch" or "triton"; see the module docstring.

    Returns:
        ``o`` (B, L, H, V) in ``v``'s dtype, or ``(o, final_state)`` with state
        (B, H, K, V) in the computation dtype (float32 at least).
    """
    check_inputs(q, k, v, beta, log_alpha, initial_state, scale)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = gated_delta_rule_op.resolve(backend, q.device)
    o, state = fn(q, k, v, beta, log_alpha, scale=resolve_scale(scale, q.shape[-1]), chunk_size=chunk_size,
                  initial_state=initial_state)
    return (o, state) if return_final_state else o


def gated_delta_rule_step(q, k, v, beta, state, *, log_alpha=None, scale: float | None = None):
    """One position of the gated delta rule, for generation: one iteration of the reference loop.

    Args: q, k (B, H, K); v (B, H, V); beta (B, H); state (B, H, K, V), required;
    log_alpha (B, H) or None (alpha = 1); scale as in ``gated_delta_rule``.

    Returns:
        ``(o, new_state)``: o (B, H, V) in ``v``'s dtype, new_state (B, H, K, V) in the
        computation dtype (float32 at least), as from ``gated_delta_rule``.
    """
    check_inputs(q, k, v, beta, log_alpha, state, scale, step=True)
    o, new_state = _reference.step(q, k, v, beta, log_alpha, state, resolve_scale(scale, q.shape[-1]))
    return o.to(v.dtype), new_state


from ssmlab.ops.gated_delta_rule import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.gated_delta_rule import torch as _torch_backend  # noqa: E402,F401

gated_delta_rule_op.register_triton(
    lambda: importlib.import_module("ssmlab.ops.gated_delta_rule.triton").gated_delta_rule_triton)
