"""RWKV-7 "Goose" (arXiv 2503.14456): the generalised delta rule with a vector-valued decay.

Each head keeps a matrix memory ``S`` of shape (K, V), keys to values. At each position
it decays along each key dimension by its own ``w_t = exp(log_decay_t)``, takes a rank-one
correction ``b_t (a_t^T S)`` of what the memory returns for ``a_t``, and adds the value
``v_t`` under the key ``k_t``; the output reads the new memory with the receptance ``r_t``::

    S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T      (K, V)
    o_t = scale * S_t^T r_t                                (V,)

This is the paper's and the official code's (BlinkDL/RWKV-LM, ``RWKV-v7``)
``S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T``, ``o_t = S_t r_t`` written for the
transposed memory: the official state is (V, K), values first; here it is (B, H, K, V), keys
first, the layout of flash-linear-attention's ``chunk_rwkv7`` and ``dplr_recurrence``, so their
states can be passed in and out unchanged. Both the decay and the correction act on
``S_{t-1}``. The RWKV-7 layer passes ``a = -kappa_hat`` (the L2-normalised "removal key") and
``b = kappa_hat * iclr`` (times the in-context learning rate), so the transition is
``diag(w) - kappa_hat (kappa_hat * iclr)^T``, and ``scale = 1`` (the default here, as
flash-linear-attention's ``chunk_rwkv7``; not ``K ** -0.5`` as in the other ops of the family).
With ``a = -k``, ``b = beta k``, ``v -> beta v`` and a scalar decay this is the gated delta rule.

Shapes: r, k, log_decay, a, b (B, L, H, K); v (B, L, H, V); state (B, H, K, V).
``log_decay`` is expected <= 0 (RWKV-7 keeps it in (-exp(-1/2), 0)); not checked, as that
would need the values.

Backends, computing the same function:

* ``reference``: the recurrence, one position at a time (the specification);
* ``torch`` (default): the chunkwise form, a WY/UT representation of the products of the
  transitions inside a chunk (as flash-linear-attention's ``chunk_dplr_delta_rule``, worked out
  here for this module). With cumulative log-decays ``G_i = sum_{s<=i} log_decay_s`` from the
  chunk's start (and ``G_i^- = G_{i-1}``, ``G_0^- = 0``) and the entering memory ``S_0``, the
  correction ``b_i u_i^T`` with ``u_i = S_{i-1}^T a_i`` is a second write, and the memory after
  position i inside the chunk is
  ``exp(G_i) * S_0 + sum_{j<=i} exp(G_i - G_j) * (k_j v_j^T + b_j u_j^T)`` (``*`` scales the
  rows, one per key). So the ``u_i`` satisfy the unit lower triangular system
  ``(I - A_ab) u = A_ak V + (a * exp(G^-)) S_0`` with, for ``j < i``,
  ``A_xy[i, j] = sum_c x_ic y_jc exp(G^-_ic - G_jc)``; one triangular solve per chunk gives
  ``u = U + W S_0``. The outputs are ``(r * exp(G)) S_0 + A_rk V + A_rb u`` with ``A_rk``,
  ``A_rb`` the same sums over ``j <= i`` with ``exp(G_i - G_j)``, and the memory leaving the chunk
  is ``exp(G_C) * S_0 + (k * exp(G_C - G))^T V + (b * exp(G_C - G))^T u``. A loop over the
  chunks (not the positions) carries the memory. The four score matrices are built as in
  :func:`ssmlab.ops.gla` by halving: the block of second-half rows and first-half columns is a
  matrix product of ``x_i exp(G_i - G_m)`` and ``y_j exp(G_m - G_j)`` with ``m`` the last
  position of the first half, so every exponent is a decay over a span of positions (<= 0)
  and nothing overflows in float32, whatever the decays. Work
  O(L C (K + V) + L K log C + L K V), memory O(B H L (C + K)) besides the inputs; any chunk
  size, any L.
"""

from __future__ import annotations

from numbers import Real

from ssmlab.ops._checks import check_heads, check_keys_values, check_tensor
from ssmlab.ops._dispatch import Op

rwkv7_op = Op("rwkv7")


def check_inputs(r, k, v, log_decay, a, b, initial_state=None, scale=1.0, *, step=False):
    heads, key_dim, lead = check_heads("rwkv7", "r", r, "K", step=step)
    check_keys_values(k, v, initial_state, scale, lead, heads, key_dim, step=step)
    for name, t in (("log_decay", log_decay), ("a", a), ("b", b)):
        check_tensor(name, t, lead + (heads, key_dim), allow_complex=False)
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise ValueError(f"scale must be a real number, got {scale!r}")


def rwkv7(r, k, v, log_decay, a, b, *, scale: float = 1.0, initial_state=None, return_final_state: bool = False,
          chunk_size: int = 64, backend: str | None = None):
    """Run the RWKV-7 recurrence (the generalised delta rule) over a sequence.

    Args:
        r: (B, L, H, K) receptances (the queries).
        k: (B, L, H, K) keys.
        v: (B, L, H, V) values.
        log_decay: (B, L, H, K) log decays, <= 0.
        a, b: (B, L, H, K) the rank-one part of the transition ``diag(w) + b a^T`` of the (K, V)
            memory (in RWKV-7, ``a = -kappa_hat`` and ``b = kappa_hat * iclr``).
        scale: multiplies r (1.0, as the official code).
        initial_state: (B, H, K, V) memory before the first position; zeros when None.
        return_final_state: also return the memory after the last position.
        chunk_size: positions per chunk of the ``torch`` backend (any L works).
        backend: "reference" or "torch"; see the module docstring.

    Returns:
        ``o`` (B, L, H, V) in ``v``'s dtype, or ``(o, final_state)`` with state
        (B, H, K, V) in the computation dtype (float32 at least).
    """
    check_inputs(r, k, v, log_decay, a, b, initial_state, scale)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = rwkv7_op.resolve(backend, r.device)
    o, state = fn(r, k, v, log_decay, a, b, scale=float(scale), chunk_size=chunk_size, initial_state=initial_state)
    return (o, state) if return_final_state else o


def rwkv7_step(r, k, v, log_decay, a, b, state, *, scale: float = 1.0):
    """One position of RWKV-7, for generation: one iteration of the reference loop.

    Args: r, k, log_decay, a, b (B, H, K); v (B, H, V); state (B, H, K, V), required; scale as in
    ``rwkv7``.

    Returns:
        ``(o, new_state)``: o (B, H, V) in ``v``'s dtype, new_state (B, H, K, V) in the
        computation dtype (float32 at least), as from ``rwkv7``.
    """
    check_inputs(r, k, v, log_decay, a, b, state, scale, step=True)
    o, new_state = _reference.step(r, k, v, log_decay, a, b, state, float(scale))
    return o.to(v.dtype), new_state


from ssmlab.ops.rwkv7 import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.rwkv7 import torch as _torch_backend  # noqa: E402,F401
