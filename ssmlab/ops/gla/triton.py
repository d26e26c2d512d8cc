"""Gated linear attention (arXiv 2312.06635) as Triton kernels: the chunkwise form, forward and backward.

The sequence is cut into chunks of ``BT`` = 64 positions and each chunk into sub-chunks
of ``BC`` = 16. With ``G`` the cumulative log-decay inside a chunk (float32, formed by a
cumsum in torch), the kernels are:

* ``_fwd_h``: one program per (key block, value block, batch x head) walks the chunks
  in order, stores the memory entering each chunk and passes
  ``S <- diag(exp(G_C)) S + (k exp(G_C - G))^T v`` (a ``tl.dot``); the last is the final state.
* ``_fwd_a``: the intra-chunk scores ``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)``, j <= i,
  by the secondary chunking of the paper (section 4.2): the block of sub-chunk rows I and
  columns J < I is the ``tl.dot`` of ``q_I exp(G_I - G_r)`` and ``k_J exp(G_r - G_J)``
  with ``r`` the first position of I (both factors <= 1), and the diagonal sub-chunk
  is formed elementwise in log space, one column at a time. No ``exp(-G)`` is formed,
  so nothing overflows however strong the decay.
* ``_fwd_o``: ``o = scale ((q exp(G)) S_c + A v)`` per chunk.

The backward recomputes the chunk states, passes the state gradient backwards through
the chunks (``_bwd_dh``), forms ``dA = scale tril(do v^T)`` (``_bwd_da``), the value
gradient (``_bwd_dv``), the intra-chunk query and key gradients by the same secondary
chunking (``_bwd_dqk_intra``) and the inter-chunk ones (``_bwd_dqk_inter``). The
log-decay gradient is the reverse cumulative sum over the sequence of
``q * dq - k * dk`` (the decay enters the parallel form only as ``q_i exp(Gamma_i)`` and
``k_j exp(-Gamma_j)`` with ``Gamma`` the cumulative sum over the whole sequence), plus
``sum_v dS_T * S_T`` for the final state, which depends on ``Gamma_T``.

Shapes as in ``ssmlab.ops.gla``: q, k, log_decay (B, L, H, K); v (B, L, H, V); states
(B, H, K, V). K and V up to 256. Accumulation in float32; the matrix products take the
inputs' dtype (bf16 / fp16 on the tensor cores); log_decay and the states stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ssmlab.ops._triton_common import dot_args
from ssmlab.ops.gla.reference import compute_dtype

BT = 64  # positions per chunk
BC = 16  # positions per sub-chunk
WIDE = dict(num_warps=8, num_stages=2)  # the launch of the kernels with the most live tiles


@triton.jit
def _fwd_h(k, v, gc, h, h0, ht, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, DT: tl.constexpr,
           PREC: tl.constexpr):
    i_kv, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = i_kv // NV, i_kv % NV
    i_b, i_h = i_bh // H, i_bh % H
    k += (i_b * L * H + i_h) * K
    v += (i_b * L * H + i_h) * V
    gc += (i_b * Lp * H + i_h) * K
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_s += tl.load(h0 + i_bh * K * V + p_kv, mask=m_kv, other=0.).to(tl.float32)
    for i_t in range(NT):
        tl.store(h + (i_bh * NT + i_t) * K * V + p_kv, b_s, mask=m_kv)
        t = i_t * BT + o_t
        m_t = t < L
        b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.)
        b_v = tl.load(v + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.)
        b_g = tl.load(gc + t[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_gl = tl.load(gc + (i_t * BT + BT - 1) * (H * K) + o_k, mask=m_k, other=0.)
        b_kd = (b_k * tl.exp(b_gl[None, :] - b_g)).to(DT)
        b_s = b_s * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_kd), b_v.to(DT), input_precision=PREC)
    tl.store(ht + i_bh * K * V + p_kv, b_s, mask=m_kv)


@triton.jit
def _fwd_a(q, k, gc, A, L, Lp, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
           BK: tl.constexpr, NC: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_tc, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_t, i_i = i_tc // NC, i_tc % NC
    i_b, i_h = i_bh // H, i_bh % H
    q += (i_b * L * H + i_h) * K
    gc += (i_b * Lp * H + i_h) * K
    k += (i_b * L * H + i_h) * K
    A += i_bh * Lp * BT
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    t_i = i_t * BT + i_i * BC + o_c
    m_i = t_i < L
    b_q = tl.load(q + t_i[:, None] * (H * K) + o_k[None, :], mask=m_i[:, None] & m_k[None, :],
                  other=0.)
    b_gi = tl.load(gc + t_i[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
    b_gr = tl.load(gc + (i_t * BT + i_i * BC) * (H * K) + o_k, mask=m_k, other=0.)
    b_qg = (b_q * tl.exp(b_gi - b_gr[None, :])).to(DT)
    p_a = A + t_i[:, None] * BT
    for i_j in range(0, i_i):
        t_j = i_t * BT + i_j * BC + o_c
        b_kj = tl.load(k + t_j[:, None] * (H * K) + o_k[None, :],
                       mask=(t_j < L)[:, None] & m_k[None, :], other=0.)
        b_gj = tl.load(gc + t_j[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_kg = (b_kj * tl.exp(b_gr[None, :] - b_gj)).to(DT)
        tl.store(p_a + i_j * BC + o_c[None, :], tl.dot(b_qg, tl.trans(b_kg), input_precision=PREC))
    b_a = tl.zeros([BC, BC], dtype=tl.float32)
    b_qf = b_q.to(tl.float32)
    for j in range(BC):
        t = i_t * BT + i_i * BC + j
        b_kj = tl.load(k + t * (H * K) + o_k, mask=m_k & (o_k * 0 + t < L), other=0.).to(tl.float32)
        b_gj = tl.load(gc + t * (H * K) + o_k, mask=m_k, other=0.)
        on = o_c[:, None] >= j
        col = tl.sum(b_qf * b_kj[None, :] * tl.exp(tl.where(on, b_gi - b_gj[None, :], 0.)), 1)
        b_a = tl.where(o_c[None, :] == j, tl.where(o_c >= j, col, 0.)[:, None], b_a)
    tl.store(p_a + i_i * BC + o_c[None, :], b_a)


@triton.jit
def _fwd_o(q, v, gc, h, A, o, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    q += (i_b * L * H + i_h) * K
    gc += (i_b * Lp * H + i_h) * K
    v += (i_b * L * H + i_h) * V
    o += (i_b * L * H + i_h) * V
    A += i_bh * Lp * BT
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.)
        b_g = tl.load(gc + t[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_h = tl.load(h + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :],
                      mask=m_k[:, None] & m_v[None, :], other=0.)
        b_o += tl.dot((b_q * tl.exp(b_g)).to(DT), b_h.to(DT), input_precision=PREC)
    b_a = tl.load(A + t[:, None] * BT + o_t[None, :])
    b_v = tl.load(v + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                  other=0.)
    b_o += tl.dot(b_a.to(DT), b_v.to(DT), input_precision=PREC)
    tl.store(o + t[:, None] * (H * V) + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _bwd_dh(q, do, gc, dh, dht, dh0, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr, HAS_DH0: tl.constexpr,
            DT: tl.constexpr, PREC: tl.constexpr):
    i_kv, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = i_kv // NV, i_kv % NV
    i_b, i_h = i_bh // H, i_bh % H
    q += (i_b * L * H + i_h) * K
    do += (i_b * L * H + i_h) * V
    gc += (i_b * Lp * H + i_h) * K
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_ds += tl.load(dht + i_bh * K * V + p_kv, mask=m_kv, other=0.).to(tl.float32)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        tl.store(dh + (i_bh * NT + i_t) * K * V + p_kv, b_ds, mask=m_kv)
        t = i_t * BT + o_t
        m_t = t < L
        b_q = tl.load(q + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.)
        b_do = tl.load(do + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                       other=0.)
        b_g = tl.load(gc + t[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_gl = tl.load(gc + (i_t * BT + BT - 1) * (H * K) + o_k, mask=m_k, other=0.)
        b_qg = (b_q * tl.exp(b_g) * scale).to(DT)
        b_ds = b_ds * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_qg), b_do.to(DT), input_precision=PREC)
    if HAS_DH0:
        tl.store(dh0 + i_bh * K * V + p_kv, b_ds, mask=m_kv)


@triton.jit
def _bwd_da(v, do, dA, scale, L, Lp, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
            DT: tl.constexpr, PREC: tl.constexpr):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    do += (i_b * L * H + i_h) * V
    v += (i_b * L * H + i_h) * V
    dA += i_bh * Lp * BT
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    b_da = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p_tv = t[:, None] * (H * V) + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m, other=0.)
        b_v = tl.load(v + p_tv, mask=m, other=0.)
        b_da += tl.dot(b_do.to(DT), tl.trans(b_v.to(DT)), input_precision=PREC)
    b_da = tl.where(o_t[:, None] >= o_t[None, :], b_da * scale, 0.)
    tl.store(dA + t[:, None] * BT + o_t[None, :], b_da)


@triton.jit
def _bwd_dv(k, do, gc, dh, A, dv, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    do += (i_b * L * H + i_h) * V
    k += (i_b * L * H + i_h) * K
    gc += (i_b * Lp * H + i_h) * K
    dv += (i_b * L * H + i_h) * V
    A += i_bh * Lp * BT
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_do = tl.load(do + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                   other=0.)
    b_a = tl.load(A + t[:, None] * BT + o_t[None, :]) * scale
    b_dv = tl.dot(tl.trans(b_a.to(DT)), b_do.to(DT), input_precision=PREC)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.)
        b_g = tl.load(gc + t[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_gl = tl.load(gc + (i_t * BT + BT - 1) * (H * K) + o_k, mask=m_k, other=0.)
        b_dh = tl.load(dh + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :],
                       mask=m_k[:, None] & m_v[None, :], other=0.)
        b_kd = (b_k * tl.exp(b_gl[None, :] - b_g)).to(DT)
        b_dv += tl.dot(b_kd, b_dh.to(DT), input_precision=PREC)
    tl.store(dv + t[:, None] * (H * V) + o_v[None, :], b_dv.to(dv.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _bwd_dqk_intra(q, k, gc, dA, dq, dk, L, Lp, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                   BC: tl.constexpr, BK: tl.constexpr, NC: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_tc, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_t, i_i = i_tc // NC, i_tc % NC
    i_b, i_h = i_bh // H, i_bh % H
    gc += (i_b * Lp * H + i_h) * K
    k += (i_b * L * H + i_h) * K
    q += (i_b * L * H + i_h) * K
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    t_i = i_t * BT + i_i * BC + o_c
    m_i = t_i < L
    b_gi = tl.load(gc + t_i[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
    p_da = dA + i_bh * Lp * BT
    # dq_i = sum_{j <= i} dA_ij k_j exp(G_i - G_j); earlier sub-chunks through the first position r of this one.
    b_gr = tl.load(gc + (i_t * BT + i_i * BC) * (H * K) + o_k, mask=m_k, other=0.)
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(0, i_i):
        t_j = i_t * BT + i_j * BC + o_c
        b_kj = tl.load(k + t_j[:, None] * (H * K) + o_k[None, :],
                       mask=(t_j < L)[:, None] & m_k[None, :], other=0.)
        b_gj = tl.load(gc + t_j[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_kg = (b_kj * tl.exp(b_gr[None, :] - b_gj)).to(DT)
        b_da = tl.load(p_da + t_i[:, None] * BT + i_j * BC + o_c[None, :])
        b_dq += tl.dot(b_da.to(DT), b_kg, input_precision=PREC)
    b_dq *= tl.exp(b_gi - b_gr[None, :])
    # dk_j = sum_{i >= j} dA_ij q_i exp(G_i - G_j); later sub-chunks through the last position n of this one.
    b_gn = tl.load(gc + (i_t * BT + i_i * BC + BC - 1) * (H * K) + o_k, mask=m_k, other=0.)
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(i_i + 1, NC):
        t_j = i_t * BT + i_j * BC + o_c
        b_qj = tl.load(q + t_j[:, None] * (H * K) + o_k[None, :],
                       mask=(t_j < L)[:, None] & m_k[None, :], other=0.)
        b_gj = tl.load(gc + t_j[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
        b_qg = (b_qj * tl.exp(b_gj - b_gn[None, :])).to(DT)
        b_da = tl.load(p_da + t_j[:, None] * BT + i_i * BC + o_c[None, :])
        b_dk += tl.dot(tl.trans(b_da.to(DT)), b_qg, input_precision=PREC)
    b_dk *= tl.exp(b_gn[None, :] - b_gi)
    # The diagonal sub-chunk, one position at a time in log space.
    for j in range(BC):
        t = i_t * BT + i_i * BC + j
        b_kj = tl.load(k + t * (H * K) + o_k, mask=m_k & (o_k * 0 + t < L), other=0.).to(tl.float32)
        b_qj = tl.load(q + t * (H * K) + o_k, mask=m_k & (o_k * 0 + t < L), other=0.).to(tl.float32)
        b_gj = tl.load(gc + t * (H * K) + o_k, mask=m_k, other=0.)
        b_dacol = tl.load(p_da + t_i * BT + i_i * BC + j)  # dA_{i, j}, (BC,)
        b_darow = tl.load(p_da + t * BT + i_i * BC + o_c)  # dA_{j, i}, (BC,)
        below = o_c[:, None] >= j
        b_dq += tl.where(below, b_dacol[:, None] * b_kj[None, :] * tl.exp(tl.where(below, b_gi - b_gj[None, :], 0.)),
                         0.)
        above = o_c[:, None] <= j
        b_dk += tl.where(above, b_darow[:, None] * b_qj[None, :] * tl.exp(tl.where(above, b_gj[None, :] - b_gi, 0.)),
                         0.)
    p = (i_b * L * H + i_h) * K + t_i[:, None] * (H * K) + o_k[None, :]
    m = m_i[:, None] & m_k[None, :]
    tl.store(dq + p, b_dq, mask=m)
    tl.store(dk + p, b_dk, mask=m)


@triton.jit
def _bwd_dqk_inter(q, k, v, do, gc, h, dh, dq, dk, dg, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr,
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr,
                   PREC: tl.constexpr):
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    do += (i_b * L * H + i_h) * V
    v += (i_b * L * H + i_h) * V
    gc += (i_b * Lp * H + i_h) * K
    t = i_t * BT + tl.arange(0, BT)
    m_t = t < L
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        b_do = tl.load(do + t[:, None] * (H * V) + o_v[None, :], mask=m, other=0.)
        b_v = tl.load(v + t[:, None] * (H * V) + o_v[None, :], mask=m, other=0.)
        p_h = (i_bh * NT + i_t) * K * V + o_v[:, None] + o_k[None, :] * V  # (BV, BK): the state transposed
        m_h = (o_v < V)[:, None] & m_k[None, :]
        b_h = tl.load(h + p_h, mask=m_h, other=0.)
        b_dh = tl.load(dh + p_h, mask=m_h, other=0.)
        b_dq += tl.dot(b_do.to(DT), b_h.to(DT), input_precision=PREC)
        b_dk += tl.dot(b_v.to(DT), b_dh.to(DT), input_precision=PREC)
    p = (i_b * L * H + i_h) * K + t[:, None] * (H * K) + o_k[None, :]
    m = m_t[:, None] & m_k[None, :]
    b_g = tl.load(gc + t[:, None] * (H * K) + o_k[None, :], mask=m_k[None, :], other=0.)
    b_gl = tl.load(gc + (i_t * BT + BT - 1) * (H * K) + o_k, mask=m_k, other=0.)
    b_dq = b_dq * tl.exp(b_g) * scale + tl.load(dq + p, mask=m, other=0.)
    b_dk = b_dk * tl.exp(b_gl[None, :] - b_g) + tl.load(dk + p, mask=m, other=0.)
    b_q = tl.load(q + p, mask=m, other=0.).to(tl.float32)
    b_k = tl.load(k + p, mask=m, other=0.).to(tl.float32)
    tl.store(dq + p, b_dq, mask=m)
    tl.store(dk + p, b_dk, mask=m)
    tl.store(dg + p, b_q * b_dq - b_k * b_dk, mask=m)


def _blocks(K: int, V: int):
    if K > 256 or V > 256:
        raise ValueError(f"the triton backend of gla supports K, V <= 256, got K={K}, V={V}")
    bk_full = max(16, triton.next_power_of_2(K))
    return bk_full, min(64, bk_full), min(64, max(16, triton.next_power_of_2(V)))


def _chunk_cumsum(g: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """The cumulative sum of ``g`` (B, L, H, K) inside each chunk, float32, padded with zeros to (B, n BT, H, K)."""
    batch, length, heads, dim = g.shape
    g = F.pad(g.float(), (0, 0, 0, 0, 0, n_chunks * BT - length))
    return g.view(batch, n_chunks, BT, heads, dim).cumsum(2).view(batch, n_chunks * BT, heads, dim)


def _states(k, v, gc, h0, n_chunks, bk, bv, dt):
    batch, length, heads, key_dim = k.shape
    value_dim = v.shape[-1]
    h = k.new_empty(batch, heads, n_chunks, key_dim, value_dim, dtype=torch.float32)
    ht = k.new_empty(batch, heads, key_dim, value_dim, dtype=torch.float32)
    grid = (triton.cdiv(key_dim, bk) * triton.cdiv(value_dim, bv), batch * heads)
    _fwd_h[grid](k, v, gc, h, h0 if h0 is not None else ht, ht, length, gc.shape[1], n_chunks, heads, key_dim,
                 value_dim, BT=BT, **dt, BK=bk, BV=bv, HAS_H0=h0 is not None)
    return h, ht


class _GLA(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale):
        batch, length, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        bk_full, bk, bv = _blocks(key_dim, value_dim)
        n_chunks = triton.cdiv(length, BT)
        gc = _chunk_cumsum(g, n_chunks)  # (B, Lp, H, K)
        dt = dot_args(q, _fwd_h)
        h, ht = _states(k, v, gc, h0, n_chunks, bk, bv, dt)
        A = q.new_zeros(batch * heads, n_chunks * BT, BT, dtype=torch.float32)
        _fwd_a[(n_chunks * (BT // BC), batch * heads)](q, k, gc, A, length, gc.shape[1], heads, key_dim, BT=BT, BC=BC,
                                                        BK=bk_full, NC=BT // BC, **dt)
        o = torch.empty_like(v)
        _fwd_o[(triton.cdiv(value_dim, bv), n_chunks, batch * heads)](
            q, v, gc, h, A, o, scale, length, gc.shape[1], n_chunks, heads, key_dim, value_dim, BT=BT, BK=bk, BV=bv,
            **dt, **WIDE)
        ctx.save_for_backward(q, k, v, gc, h0, A, ht)
        ctx.scale = scale
        ctx.g_dtype = g.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0, A, ht = ctx.saved_tensors
        scale = ctx.scale
        batch, length, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        bk_full, bk, bv = _blocks(key_dim, value_dim)
        n_chunks = triton.cdiv(length, BT)
        lp = gc.shape[1]
        do = do.contiguous()
        dt = dot_args(q, _fwd_h)
        h, _ = _states(k, v, gc, h0, n_chunks, bk, bv, dt)
        dh = torch.empty_like(h)
        dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
        if dht is not None:
            dht = dht.contiguous()
        _bwd_dh[(triton.cdiv(key_dim, bk) * triton.cdiv(value_dim, bv), batch * heads)](
            q, do, gc, dh, dht if dht is not None else ht, dh0 if dh0 is not None else ht, scale, length, lp,
            n_chunks, heads, key_dim, value_dim, BT=BT, BK=bk, BV=bv, HAS_DHT=dht is not None, HAS_DH0=h0 is not None,
            **dt, **WIDE)
        dA = torch.empty_like(A)
        _bwd_da[(n_chunks, batch * heads)](v, do, dA, scale, length, lp, heads, value_dim, BT=BT, **dt, BV=bv)
        dv = torch.empty_like(v)
        _bwd_dv[(triton.cdiv(value_dim, bv), n_chunks, batch * heads)](
            k, do, gc, dh, A, dv, scale, length, lp, n_chunks, heads, key_dim, value_dim, BT=BT, BK=bk, BV=bv, **dt,
            **WIDE)
        dq = q.new_empty(q.shape, dtype=torch.float32)
        dk = torch.empty_like(dq)
        _bwd_dqk_intra[(n_chunks * (BT // BC), batch * heads)](q, k, gc, dA, dq, dk, length, lp, heads, key_dim,
                                                               BT=BT, **dt, BC=BC, BK=bk_full, NC=BT // BC)
        dg = torch.empty_like(dq)
        _bwd_dqk_inter[(triton.cdiv(key_dim, bk), n_chunks, batch * heads)](
            q, k, v, do, gc, h, dh, dq, dk, dg, scale, length, lp, n_chunks, heads, key_dim, value_dim,
            BT=BT, **dt, BK=bk, BV=bv, **WIDE)
        dg = dg.flip(1).cumsum(1).flip(1)
        if dht is not None:
            dg = dg + (dht * ht).sum(-1)[:, None]
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(ctx.g_dtype),
                None if h0 is None else dh0.to(h0.dtype), None)


def gla_triton(q, k, v, log_decay, *, scale, chunk_size=64, initial_state=None):
    """The ``triton`` backend of ``gla``; ``chunk_size`` is ignored (the kernels use chunks of 64)."""
    dtype = compute_dtype(q.dtype)
    q, k, v, log_decay = (t.contiguous() for t in (q, k, v, log_decay))
    h0 = None if initial_state is None else initial_state.contiguous()
    o, state = _GLA.apply(q, k, v, log_decay, h0, float(scale))
    return o, state.to(dtype)
