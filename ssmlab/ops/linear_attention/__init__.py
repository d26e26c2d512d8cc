"""Causal linear attention and retention: ``S_t = gamma S_{t-1} + k_t^T v_t``, ``y_t = q_t S_t``.

Linear attention (Katharopoulos et al., arXiv 2006.16236) replaces softmax
attention's ``exp(q . k)`` by ``phi(q) . phi(k)``; with a per-head decay
``0 < gamma <= 1`` it is the retention of RetNet (arXiv 2307.08621). For one head::

    S_t = gamma S_{t-1} + k_t^T v_t                                   (K, V)
    y_t = q_t S_t = sum_{s <= t} gamma^(t - s) (q_t . k_s) v_s + gamma^(t + 1) q_t S_{-1}

Shapes: q, k (B, L, H, K), feature maps already applied; v (B, L, H, V);
log_decay (H,), ``log gamma <= 0`` (None: gamma = 1, no decay); state (B, H, K, V).

The op is unnormalised. Katharopoulos' normaliser ``phi(q_t) . z_t`` with
``z_t = gamma z_{t-1} + phi(k_t)`` is the same recurrence with values that are
all ones, so a caller appends a column of ones to ``v`` (V + 1 columns): the
last output column is the normaliser and the last state column is ``z``. The
linear-attention and RetNet mixers do exactly this; one op serves both.

Backends, all computing the same function, with the same result dtype
(the promotion of the inputs):

* ``reference``: the recurrence, one position at a time (the specification);
* ``quadratic``: the parallel form, a masked ``L x L`` product like attention,
  ``y = ((q k^T) o M) v`` with ``M[t, s] = gamma^(t - s)`` for ``s <= t``, else 0;
* ``torch`` (default): the chunkwise form: the quadratic form inside chunks of
  ``chunk_size`` positions, the state carried between chunks by ``linear_scan``
  over the chunks with decay ``gamma^chunk_size``; linear in L.
* ``triton`` (default on CUDA tensors when Triton is importable): the chunkwise form as
  Triton kernels, forward and backward, shared with ``ssd`` (:mod:`ssmlab.ops.linear_attention.triton`);
  on the CPU only by name, under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

linear_attention_op = Op("linear_attention")


def check_inputs(q, k, v, log_decay=None, initial_state=None, *, step=False):
    """Validate the arguments of ``linear_attention`` (or of ``linear_attention_step`` when ``step``)."""
    seq = () if step else ("L",)
    check_tensor("q", q, ("B",) + seq + ("H", "K"), allow_complex=False)
    if not step and q.shape[1] == 0:
        raise ValueError("linear_attention needs at least one position (L >= 1)")
    check_tensor("k", k, tuple(q.shape), allow_complex=False)
    check_tensor("v", v, tuple(q.shape[:-1]) + ("V",), allow_complex=False)
    batch, heads, key_dim = q.shape[0], q.shape[-2], q.shape[-1]
    if log_decay is not None:
        check_tensor("log_decay", log_decay, (heads,), allow_complex=False)
    if initial_state is not None:
        check_tensor("initial_state" if not step else "state", initial_state,
                     (batch, heads, key_dim, v.shape[-1]), allow_complex=False)


def linear_attention(q, k, v, *, log_decay=None, initial_state=None, return_final_state: bool = False,
                     chunk_size: int = 64, backend: str | None = None):
    """Causal (unnormalised) linear attention with an optional per-head decay: retention when decayed.

    Args:
        q, k: (B, L, H, K) queries and keys, feature maps already applied.
        v: (B, L, H, V) values; append a column of ones to get the normaliser (module docstring).
        log_decay: (H,) ``log gamma <= 0`` per head; None for no decay (gamma = 1).
        initial_state: (B, H, K, V) state ``S_{-1}`` before the first position; zeros when None.
        return_final_state: also return the state after the last position.
        chunk_size: positions per chunk of the ``torch`` backend (any L works; default 64); the ``triton``
            backend rounds it up to a power of two in [16, 256].
        backend: "reference", "quadratic", "torch" or "triton"; see the module docstring.

    Returns:
        ``y`` (B, L, H, V), or ``(y, final_state)`` with state (B, H, K, V).
    """
    check_inputs(q, k, v, log_decay, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = linear_attention_op.resolve(backend, q.device)
    y, state = fn(q, k, v, log_decay=log_decay, initial_state=initial_state, chunk_size=chunk_size)
    return (y, state) if return_final_state else y


def linear_attention_step(q, k, v, state, *, log_decay=None):
    """One position of linear attention, for generation: one iteration of the reference loop.

    Args: q, k (B, H, K); v (B, H, V); state (B, H, K, V), required; log_decay (H,) or None.

    Returns:
        ``(y, new_state)``: y (B, H, V), new_state (B, H, K, V).
    """
    check_inputs(q, k, v, log_decay, state, step=True)
    return _reference.step(q, k, v, state, log_decay)


from ssmlab.ops.linear_attention import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.linear_attention import torch as _torch_backend  # noqa: E402,F401
linear_attention_op.register_triton(
    lambda: importlib.import_module("ssmlab.ops.linear_attention.triton").linear_attention_triton)
