"""Gated linear attention (GLA, arXiv 2312.06635): linear attention with a data-dependent per-key decay.

Each head keeps a matrix memory ``S`` of shape (K, V) that decays along each key
dimension by its own data-dependent gate ``exp(g_t)`` before the outer product of
the key and the value is added::

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T      (K, V)
    o_t = scale * S_t^T q_t                       (V,)

This is the paper's ``S_t = (alpha_t^T 1) o S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t``
with row vectors, ``g_t = log alpha_t``. The state is (B, H, K, V), keys first, as in
flash-linear-attention's ``chunk_gla`` and ``naive_recurrent_gla``; ``scale``
defaults to ``K ** -0.5`` as there (its ``scale=None``); pass ``scale=1.0`` for the
paper's equations. HGRN2 (arXiv 2404.07904) is this op with a parameterisation:
its forget gate ``f_t`` gives ``g_t = log f_t`` and its input gate is tied to it,
``k_t = 1 - f_t`` (flash-linear-attention's HGRN2 layer calls its GLA kernels so, with the
default scale).

Shapes: q, k, log_decay (B, L, H, K); v (B, L, H, V); state (B, H, K, V).
``log_decay`` (g) is expected <= 0 (not checked, as that would need the values).

Backends, computing the same function:

* ``reference``: the recurrence, one position at a time (the specification);
* ``torch`` (default): the chunkwise form in log space (arXiv 2312.06635 section 4),
  with the secondary chunking taken down to single positions. With cumulative
  log-decays ``G_i = sum_{r<=i} g_r`` inside a chunk, position i reads position
  j <= i through ``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)``. Only decays over a
  span of positions are formed, never ``exp(-G)``, so nothing overflows: the chunk
  is halved, the block of second-half rows and first-half columns is the matrix
  product of ``q_i exp(G_i - G_r)`` and ``k_j exp(G_r - G_j)`` with ``r`` the last
  position of the first half (i > r >= j, so both factors are <= 1), and each half
  is halved again, down to single positions (``A_ii = q_i . k_i``); a chunk whose
  size is not a power of two is padded at its end for this. A loop over the chunks
  (not the positions) carries the memory, ``S_C = diag(exp(G_C)) S_0 +
  sum_j (k_j exp(G_C - G_j)) v_j^T``, and each position reads the memory entering
  its chunk as ``(q_i exp(G_i))^T S_0``. Work O(L C (K + V) + L K log C + L K V),
  memory O(B H L (C + K)) besides the inputs; any chunk size, any L. Chunks are
  taken in groups of about 2^20 elements per intermediate, so that a short
  sequence is one group and a large batch stays in cache.
* ``triton``: the same chunkwise form as Triton kernels, forward and backward, in
  chunks of 64 with the paper's secondary chunking in sub-chunks of 16 (see
  ``ssmlab/ops/gla/triton.py``); chosen by default on CUDA tensors when Triton is
  importable, on the CPU only by name under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_heads, check_keys_values, check_tensor, resolve_scale
from ssmlab.ops._dispatch import Op

gla_op = Op("gla")


def check_inputs(q, k, v, log_decay, initial_state=None, scale=None, *, step=False):
    heads, key_dim, lead = check_heads("gla", "q", q, "K", step=step)
    check_keys_values(k, v, initial_state, scale, lead, heads, key_dim, step=step)
    check_tensor("log_decay", log_decay, lead + (heads, key_dim), allow_complex=False)


def gla(q, k, v, log_decay, *, scale: float | None = None, initial_state=None, return_final_state: bool = False,
        chunk_size: int = 64, backend: str | None = None):
    """Run gated linear attention over a sequence.

    ``q``, ``k`` (B, L, H, K), ``v`` (B, L, H, V) and ``log_decay`` (B, L, H, K), the per-key log
    forget gates g <= 0. ``scale``, ``initial_state`` (B, H, K, V), ``return_final_state``,
    ``chunk_size`` (of the ``torch`` backend) and ``backend`` ("reference", "torch" or "triton") are as in
    :func:`ssmlab.ops.gated_delta_rule`; so is what it returns: ``o`` (B, L, H, V) in ``v``'s
    dtype, and with ``return_final_state`` the memory after the last position, float32 at least.
    """
    check_inputs(q, k, v, log_decay, initial_state, scale)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    fn = gla_op.resolve(backend, q.device)
    o, state = fn(q, k, v, log_decay, scale=resolve_scale(scale, q.shape[-1]), chunk_size=chunk_size,
                  initial_state=initial_state)
    return (o, state) if return_final_state else o


def gla_step(q, k, v, log_decay, state, *, scale: float | None = None):
    """One position of GLA, for generation: one iteration of the reference loop.

    Args: q, k, log_decay (B, H, K); v (B, H, V); state (B, H, K, V), required; scale as in ``gla``.

    Returns:
        ``(o, new_state)``: o (B, H, V) in ``v``'s dtype, new_state (B, H, K, V) in the
        computation dtype (float32 at least), as from ``gla``.
    """
    check_inputs(q, k, v, log_decay, state, scale, step=True)
    o, new_state = _reference.step(q, k, v, log_decay, state, resolve_scale(scale, q.shape[-1]))
    return o.to(v.dtype), new_state


from ssmlab.ops.gla import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.gla import torch as _torch_backend  # noqa: E402,F401

gla_op.register_triton(lambda: importlib.import_module("ssmlab.ops.gla.triton").gla_triton)
