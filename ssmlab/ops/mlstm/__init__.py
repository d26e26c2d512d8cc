"""The mLSTM of xLSTM (arXiv 2405.04517): a matrix memory with an exponential input gate.

Each head keeps a matrix memory ``C`` (K, V), keys to values, a normaliser ``n`` (K,) and a
stabiliser ``m`` (a scalar). With the input gate pre-activation ``i_t`` (the input gate is
``exp(i_t)``) and the forget gate ``sigmoid(f_t)``, the paper's recurrence (section 2.3) is
kept in the stabilised form of its appendix and of the official code::

    m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
    f'_t = exp(logsigmoid(f_t) + m_{t-1} - m_t),  i'_t = exp(i_t - m_t)
    C_t = f'_t C_{t-1} + i'_t k_t v_t^T                                   (K, V)
    n_t = f'_t n_{t-1} + i'_t k_t                                          (K,)
    h_t = C_t^T q~_t / (max(|n_t . q~_t|, exp(-m_t)) + eps),  q~_t = scale q_t   (V,)

The state ``(C, n, m)`` stands for the memory ``C exp(m)`` and normaliser ``n exp(m)`` of the
paper's unstabilised equations, in which ``h_t = C^T q~ / max(|n . q~|, 1)``; every ``exp`` above
has an argument <= 0. ``eps`` (1e-6, as NX-AI's ``mlstm_kernels`` and ``xlstm``) is added to the
denominator, which makes ``h`` depend on ``m`` by ``eps exp(m_t)``; every backend therefore
computes the same ``m_t`` (the recurrence above, unrolled), so their outputs agree to rounding and
their states can be compared as they are, not only after de-stabilising. The memory is kept keys
first (K, V), the transpose of the paper's ``v k^T``, as in ``mlstm_kernels``.

The empty memory is ``C = 0``, ``n = 0`` and ``m = -inf`` (``initial_state=None``): then
``m_t = max_{j<=t} (i_j + sum_{j<r<=t} logsigmoid(f_r))``, the row maximum of the paper's parallel
form (its appendix), which is how ``xlstm``'s ``mLSTMLayer.forward`` and
``mlstm_kernels``' parallel form stabilise. ``mlstm_kernels``' recurrent and chunkwise forms (and
``xlstm``'s ``step``) start from ``m = 0`` instead, which changes ``h`` by the ``eps`` term only;
pass ``(0, 0, 0)`` as the initial state for theirs.

``scale`` multiplies q and defaults to ``K ** -0.5`` (the official ``1 / sqrt(d)``, which
``xlstm``'s cell puts on k and ``mlstm_kernels`` on q: ``h`` is the same; the memory here holds the
unscaled k, as ``mlstm_kernels``' does). The projections, the gates' pre-activations and the
output norm belong to the mixer.

Shapes: q, k (B, L, H, K); v (B, L, H, V); i, f (B, L, H); state C (B, H, K, V), n (B, H, K), m (B, H).

Backends, computing the same function:

* ``reference``: the recurrence above, one position at a time (the specification);
* ``torch`` (default): the chunkwise form (arXiv 2503.14376, the ``mlstm_kernels`` chunkwise
  kernels). Inside a chunk of C positions with cumulative log forget gates ``b_t`` the
  positions interact through the (C, C) matrix ``D_tj = b_t - b_j + i_j`` (j <= t), stabilised
  by its row maxima, all chunks at once; a loop over the chunks (not the positions) carries
  ``(C, n, m)`` from chunk to chunk, each chunk's own contribution stabilised by its own maximum;
  then every output combines the two with ``m_t = max(b_t + m_chunk, max_j D_tj)``. Every
  exponent is <= 0. Work O(L C (K + V) + L K V), memory O(B H L C) besides the inputs. Chunks
  are taken in groups of about 2^20 elements per intermediate, as in ``gated_delta_rule``.
* ``parallel``: the quadratic form of the paper's appendix over the whole sequence,
  ``D_tj`` for all j <= t <= L at once and the initial state as one more term; O(L^2) time and
  memory, chosen only by name (``backend="parallel"``).
"""

from __future__ import annotations

from numbers import Real

from ssmlab.ops._checks import check_heads, check_keys_values, check_tensor, resolve_scale
from ssmlab.ops._dispatch import Op

mlstm_op = Op("mlstm")


def check_inputs(q, k, v, i, f, state=None, scale=None, eps=1e-6, *, step=False):
    heads, key_dim, lead = check_heads("mlstm", "q", q, "K", step=step)
    if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 3):
        got = f"{len(state)} tensors" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{'state' if step else 'initial_state'} must be a tuple (C, n, m) of shapes (B, H, K, V), "
                         f"(B, H, K), (B, H), got {got}")
    check_keys_values(k, v, None if state is None else state[0], scale, lead, heads, key_dim, step=step)
    check_tensor("i", i, lead + (heads,), allow_complex=False)
    check_tensor("f", f, lead + (heads,), allow_complex=False)
    if state is not None:
        prefix = "state" if step else "initial_state"
        check_tensor(f"{prefix} n", state[1], (lead[0], heads, key_dim), allow_complex=False)
        check_tensor(f"{prefix} m", state[2], (lead[0], heads), allow_complex=False)
    if isinstance(eps, bool) or not isinstance(eps, Real) or eps < 0:
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")


def mlstm(q, k, v, i, f, *, scale: float | None = None, eps: float = 1e-6, initial_state=None,
          return_final_state: bool = False, chunk_size: int = 64, backend: str | None = None):
    """Run the mLSTM over a sequence.

    Args:
        q, k: (B, L, H, K) queries and keys.
        v: (B, L, H, V) values.
        i: (B, L, H) input gate pre-activations (log input gates; the gate is ``exp(i)``).
        f: (B, L, H) forget gate pre-activations (the gate is ``sigmoid(f)``).
        scale: multiplies q; ``K ** -0.5`` when None, as the official code.
        eps: added to the denominator of h (1e-6, as the official code).
        initial_state: ``(C, n, m)``: (B, H, K, V), (B, H, K), (B, H); the empty memory
            (zeros and ``m = -inf``) when None.
        return_final_state: also return ``(C, n, m)`` after the last position.
        chunk_size: positions per chunk of the ``torch`` backend (any L works).
        backend: "reference", "torch" or "parallel"; see the module docstring.

    Returns:
        ``h`` (B, L, H, V) in ``v``'s dtype, or ``(h, (C, n, m))`` with the state in the computation
        dtype (float32 at least).
    """
    check_inputs(q, k, v, i, f, initial_state, scale, eps)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = mlstm_op.resolve(backend, q.device)
    h, state = fn(q, k, v, i, f, scale=resolve_scale(scale, q.shape[-1]), eps=float(eps), chunk_size=chunk_size,
                  initial_state=None if initial_state is None else tuple(initial_state))
    return (h, state) if return_final_state else h


def mlstm_step(q, k, v, i, f, state, *, scale: float | None = None, eps: float = 1e-6):
    """One position of the mLSTM, for generation: one iteration of the reference loop.

    Args: q, k (B, H, K); v (B, H, V); i, f (B, H); state ``(C, n, m)`` (B, H, K, V), (B, H, K),
    (B, H), required (the empty memory is zeros with ``m = -inf``); scale and eps as in ``mlstm``.

    Returns:
        ``(h, new_state)``: h (B, H, V) in ``v``'s dtype, new_state ``(C, n, m)`` in the computation
        dtype (float32 at least), as from ``mlstm``.
    """
    check_inputs(q, k, v, i, f, state, scale, eps, step=True)
    h, new_state = _reference.step(q, k, v, i, f, tuple(state), resolve_scale(scale, q.shape[-1]), float(eps))
    return h.to(v.dtype), new_state


from ssmlab.ops.mlstm import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.mlstm import torch as _torch_backend  # noqa: E402,F401
from ssmlab.ops.mlstm import parallel as _parallel_backend  # noqa: E402,F401
