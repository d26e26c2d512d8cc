"""The gated delta rule (arXiv 2412.06464) as Triton kernels: the chunkwise WY form, forward and backward.

The sequence is cut into chunks of ``BT`` = 64 positions. With ``G`` the cumulative
log-decay inside a chunk (float32, a cumsum in torch) and ``S`` the memory entering it,
the forward kernels are (the algorithm of the ``torch`` backend, see ``ssmlab.ops.gated_delta_rule``):

* ``_fwd_wy``, one program per chunk: ``A_ij = beta_i (k_i . k_j) exp(G_i - G_j)`` for
  j < i (a ``tl.dot`` of the keys), ``T = (I + A)^-1`` (forward substitution inside
  blocks of 16 positions, the blocks joined by four matrix products), and the WY
  factors ``W = T diag(beta exp(G)) K`` and ``U = T diag(beta) V``.
* ``_fwd_h``, one program per (value block, batch x head) walking the chunks in order:
  stores ``S``, the corrected values ``u = U - W S`` and passes
  ``S <- exp(G_C) S + (K exp(G_C - G))^T u``; the last is the final state.
* ``_fwd_o``: ``o = scale ((Q exp(G)) S + (Q K^T o exp(G_i - G_j))_{j <= i} u)``.

Every exponent is a decay over a span of positions (<= 0), so nothing overflows. The
backward passes the state gradient backwards through the chunks and forms the
gradient of the corrected values on the way (``_bwd_dhu``, recomputing the chunk states
first with ``_fwd_h``), then two kernels of one program per chunk form the gradients
of q, k, v, beta and of ``G``: through the WY factors and the triangular solve
(``_bwd_wy``, ``dA = -T^T dT T^T``), and through the outputs and the state update
(``_bwd_qk``); the gradient of log_alpha is the reverse cumulative sum of that of ``G``
inside each chunk.

Shapes as in ``ssmlab.ops.gated_delta_rule``: q, k (B, L, H, K); v (B, L, H, V); beta,
log_alpha (B, L, H); states (B, H, K, V). K and V up to 256. Accumulation in float32;
the matrix products take the inputs' dtype (bf16 / fp16 on the tensor cores); beta,
log_alpha, the triangular factors and the states stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ssmlab.ops._triton_common import dot_args
from ssmlab.ops.gated_delta_rule.reference import compute_dtype

BT = 64  # positions per chunk
BC = 16  # positions per block of the triangular solve
WIDE = dict(num_warps=8, num_stages=2)  # the launch of every kernel here: many live tiles


@triton.jit
def _fwd_wy(k, v, beta, gc, T, w, u, L, Lp, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
            BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    k += (i_b * L * H + i_h) * K
    v += (i_b * L * H + i_h) * V
    beta += i_b * L * H + i_h
    gc += i_b * Lp * H + i_h
    T += i_bh * Lp * BT
    w += i_bh * Lp * K
    u += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                  other=0.)
    b_beta = tl.load(beta + t * H, mask=m_t, other=0.).to(tl.float32)
    b_g = tl.load(gc + t * H)
    strict = o_t[:, None] > o_t[None, :]
    b_a = tl.dot(b_k.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC) * b_beta[:, None]
    b_a = tl.where(strict, b_a * tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], 0.)), 0.)
    # T = (I + A)^-1, A strictly lower triangular, in blocks of BC positions. First the inverse D of the block
    # diagonal I + A_d by forward substitution, the BT // BC blocks at once: row i is e_i - sum_j (A_d)_ij D_j over
    # the earlier rows j of its block. Then I + A = (I + A_d)(I + N) with N = D A_o (A_o: the blocks below the
    # diagonal), strictly block lower, so N^4 = 0 for 4 blocks and T = (I - N)(I + N^2) D.
    same = (o_t[:, None] // BC) == (o_t[None, :] // BC)
    eye = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    b_ad = tl.where(same, b_a, 0.)
    b_d = eye
    for r in range(1, BC):
        rows = (o_t % BC == r)[:, None]
        b_d = tl.where(rows, b_d - tl.dot(tl.where(rows, b_ad, 0.), b_d, input_precision=PREC), b_d)
    b_n = tl.dot(b_d, tl.where(same, 0., b_a), input_precision=PREC)
    b_T = tl.dot(tl.dot(eye - b_n, eye + tl.dot(b_n, b_n, input_precision=PREC), input_precision=PREC), b_d,
                 input_precision=PREC)
    tl.store(T + t[:, None] * BT + o_t[None, :], b_T)
    b_x = (b_k * (b_beta * tl.exp(b_g))[:, None]).to(DT)
    b_w = tl.dot(b_T.to(DT), b_x, input_precision=PREC)
    tl.store(w + t[:, None] * K + o_k[None, :], b_w, mask=m_k[None, :])
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        b_v = tl.load(v + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.)
        b_u = tl.dot(b_T.to(DT), (b_v * b_beta[:, None]).to(DT), input_precision=PREC)
        tl.store(u + t[:, None] * V + o_v[None, :], b_u, mask=m_v[None, :])


@triton.jit
def _fwd_h(k, w, u, gc, h, vn, h0, ht, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, DT: tl.constexpr,
           PREC: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    k += (i_b * L * H + i_h) * K
    gc += i_b * Lp * H + i_h
    w += i_bh * Lp * K
    u += i_bh * Lp * V
    vn += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
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
        b_w = tl.load(w + t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)
        b_u = tl.load(u + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
        b_vn = b_u - tl.dot(b_w.to(DT), b_s.to(DT), input_precision=PREC)
        tl.store(vn + t[:, None] * V + o_v[None, :], b_vn, mask=m_v[None, :])
        b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.)
        b_g = tl.load(gc + t * H)
        b_gl = tl.load(gc + (i_t * BT + BT - 1) * H)
        b_kd = (b_k * tl.exp(b_gl - b_g)[:, None]).to(DT)
        b_s = b_s * tl.exp(b_gl) + tl.dot(tl.trans(b_kd), b_vn.to(DT), input_precision=PREC)
    tl.store(ht + i_bh * K * V + p_kv, b_s, mask=m_kv)


@triton.jit
def _fwd_o(q, k, gc, h, vn, o, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    q += (i_b * L * H + i_h) * K
    k += (i_b * L * H + i_h) * K
    o += (i_b * L * H + i_h) * V
    gc += i_b * Lp * H + i_h
    vn += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m = m_t[:, None] & m_k[None, :]
    b_q = tl.load(q + t[:, None] * (H * K) + o_k[None, :], mask=m, other=0.)
    b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m, other=0.)
    b_g = tl.load(gc + t * H)
    b_h = tl.load(h + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :],
                  other=0.)
    b_o = tl.dot((b_q * tl.exp(b_g)[:, None]).to(DT), b_h.to(DT), input_precision=PREC)
    causal = o_t[:, None] >= o_t[None, :]
    b_sc = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
    b_sc = tl.where(causal, b_sc * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.)), 0.)
    b_vn = tl.load(vn + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
    b_o += tl.dot(b_sc.to(DT), b_vn.to(DT), input_precision=PREC)
    tl.store(o + t[:, None] * (H * V) + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _bwd_dhu(q, k, w, gc, do, dh, dvn, dht, dh0, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr,
             V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
             HAS_DH0: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    q += (i_b * L * H + i_h) * K
    k += (i_b * L * H + i_h) * K
    do += (i_b * L * H + i_h) * V
    gc += i_b * Lp * H + i_h
    w += i_bh * Lp * K
    dvn += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    causal = o_t[:, None] >= o_t[None, :]
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_ds += tl.load(dht + i_bh * K * V + p_kv, mask=m_kv, other=0.).to(tl.float32)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        tl.store(dh + (i_bh * NT + i_t) * K * V + p_kv, b_ds, mask=m_kv)
        t = i_t * BT + o_t
        m_t = t < L
        m = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + t[:, None] * (H * K) + o_k[None, :], mask=m, other=0.)
        b_k = tl.load(k + t[:, None] * (H * K) + o_k[None, :], mask=m, other=0.)
        b_w = tl.load(w + t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)
        b_do = tl.load(do + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                       other=0.)
        b_g = tl.load(gc + t * H)
        b_gl = tl.load(gc + (i_t * BT + BT - 1) * H)
        b_sc = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
        b_sc = tl.where(causal, b_sc * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.)) * scale, 0.)
        b_kd = (b_k * tl.exp(b_gl - b_g)[:, None]).to(DT)
        b_dvn = (tl.dot(tl.trans(b_sc.to(DT)), b_do.to(DT), input_precision=PREC)
                 + tl.dot(b_kd, b_ds.to(DT), input_precision=PREC))
        tl.store(dvn + t[:, None] * V + o_v[None, :], b_dvn, mask=m_v[None, :])
        b_qg = (b_q * (tl.exp(b_g) * scale)[:, None]).to(DT)
        b_ds = (b_ds * tl.exp(b_gl) + tl.dot(tl.trans(b_qg), b_do.to(DT), input_precision=PREC)
                - tl.dot(tl.trans(b_w.to(DT)), b_dvn.to(DT), input_precision=PREC))
    if HAS_DH0:
        tl.store(dh0 + i_bh * K * V + p_kv, b_ds, mask=m_kv)


@triton.jit
def _bwd_wy(k, v, beta, gc, T, h, dvn, dk, dv, dbeta, dg, L, Lp, NT, H: tl.constexpr, K: tl.constexpr,
            V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr,
            PREC: tl.constexpr):
    """Through u = U - W S, W = T diag(beta exp(G)) K, U = T diag(beta) V and T = (I + A)^-1: dv, and the parts
    of dk, dbeta and dG, one program per chunk."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    beta += i_b * L * H + i_h
    gc += i_b * Lp * H + i_h
    dbeta += i_b * L * H + i_h
    dg += i_b * Lp * H + i_h
    T += i_bh * Lp * BT
    dvn += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_beta = tl.load(beta + t * H, mask=m_t, other=0.).to(tl.float32)
    b_T = tl.load(T + t[:, None] * BT + o_t[None, :]).to(DT)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # du S^T = -dW
    b_dt = tl.zeros([BT, BT], dtype=tl.float32)  # dT
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_tv = (i_b * L * H + i_h) * V + t[:, None] * (H * V) + o_v[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.).to(tl.float32)
        b_dvn = tl.load(dvn + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(DT)
        b_h = tl.load(h + (i_bh * NT + i_t) * K * V + o_v[:, None] + o_k[None, :] * V,
                      mask=m_v[:, None] & m_k[None, :], other=0.)  # (BV, BK): the state transposed
        b_dw += tl.dot(b_dvn, b_h.to(DT), input_precision=PREC)
        b_dy = tl.dot(tl.trans(b_T), b_dvn, input_precision=PREC)  # T^T du
        tl.store(dv + p_tv, (b_dy * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dy * b_v, 1)
        b_dt += tl.dot(b_dvn, tl.trans((b_v * b_beta[:, None]).to(DT)), input_precision=PREC)
    p_qk = (i_b * L * H + i_h) * K + t[:, None] * (H * K) + o_k[None, :]
    m = m_t[:, None] & m_k[None, :]
    b_k = tl.load(k + p_qk, mask=m, other=0.).to(tl.float32)
    b_g = tl.load(gc + t * H)
    b_eg = tl.exp(b_g)
    strict = o_t[:, None] > o_t[None, :]
    # dX = T^T dW with X = diag(beta exp(G)) K; dT += dW X^T.
    b_dx = -tl.dot(tl.trans(b_T), b_dw.to(DT), input_precision=PREC)
    b_dk = b_dx * (b_beta * b_eg)[:, None]
    b_xk = tl.sum(b_dx * b_k, 1) * b_eg
    b_db += b_xk
    b_dg = b_xk * b_beta
    b_dt -= tl.dot(b_dw.to(DT), tl.trans((b_k * (b_beta * b_eg)[:, None]).to(DT)), input_precision=PREC)
    # dA = -T^T dT T^T on the strictly lower triangle, A_ij = beta_i (k_i . k_j) exp(G_i - G_j).
    b_da = -tl.dot(tl.dot(tl.trans(b_T), b_dt.to(DT), input_precision=PREC).to(DT), tl.trans(b_T),
                   input_precision=PREC)
    b_da = tl.where(strict, b_da * tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], 0.)), 0.)
    b_dakk = b_da * tl.dot(b_k.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
    b_db += tl.sum(b_dakk, 1)
    b_za = b_dakk * b_beta[:, None]  # dA * A
    b_dg += tl.sum(b_za, 1) - tl.sum(b_za, 0)
    b_p = (b_da * b_beta[:, None]).to(DT)
    b_dk += (tl.dot(b_p, b_k.to(DT), input_precision=PREC)
             + tl.dot(tl.trans(b_p), b_k.to(DT), input_precision=PREC))
    tl.store(dk + p_qk, b_dk, mask=m)
    tl.store(dbeta + t * H, b_db, mask=m_t)
    tl.store(dg + t * H, b_dg)


@triton.jit
def _bwd_qk(q, k, gc, h, dh, vn, do, dq, dk, dg, scale, L, Lp, NT, H: tl.constexpr, K: tl.constexpr,
            V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr,
            PREC: tl.constexpr):
    """Through the outputs and the memory leaving the chunk: dq, and the rest of dk and dG, one program per chunk."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    do += (i_b * L * H + i_h) * V
    gc += i_b * Lp * H + i_h
    dg += i_b * Lp * H + i_h
    vn += i_bh * Lp * V
    o_t = tl.arange(0, BT)
    t = i_t * BT + o_t
    m_t = t < L
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # dO S^T
    b_dkd = tl.zeros([BT, BK], dtype=tl.float32)  # u dS'^T, the gradient of K exp(G_C - G)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)  # dO u^T
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        b_do = tl.load(do + t[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                       other=0.).to(DT)
        b_vn = tl.load(vn + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(DT)
        p_h = (i_bh * NT + i_t) * K * V + o_v[:, None] + o_k[None, :] * V  # (BV, BK): the state transposed
        m_h = m_v[:, None] & m_k[None, :]
        b_h = tl.load(h + p_h, mask=m_h, other=0.)
        b_dh = tl.load(dh + p_h, mask=m_h, other=0.)
        b_dq += tl.dot(b_do, b_h.to(DT), input_precision=PREC)
        b_dp += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dkd += tl.dot(b_vn, b_dh.to(DT), input_precision=PREC)
        b_hdh += tl.sum(b_h * b_dh, 0)
    p_qk = (i_b * L * H + i_h) * K + t[:, None] * (H * K) + o_k[None, :]
    m = m_t[:, None] & m_k[None, :]
    b_q = tl.load(q + p_qk, mask=m, other=0.).to(tl.float32)
    b_k = tl.load(k + p_qk, mask=m, other=0.).to(tl.float32)
    b_g = tl.load(gc + t * H)
    b_gl = tl.load(gc + (i_t * BT + BT - 1) * H)
    causal = o_t[:, None] >= o_t[None, :]
    # o = scale ((Q exp(G)) S + (Q K^T o exp(G_i - G_j))_{j <= i} u)
    b_dq = b_dq * (tl.exp(b_g) * scale)[:, None]
    b_dg = tl.sum(b_q * b_dq, 1)
    b_dps = tl.where(causal, b_dp * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.)) * scale, 0.)
    b_dq += tl.dot(b_dps.to(DT), b_k.to(DT), input_precision=PREC)
    b_z = b_dps * tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
    b_dg += tl.sum(b_z, 1) - tl.sum(b_z, 0)
    tl.store(dq + p_qk, b_dq, mask=m)
    # S' = exp(G_C) S + (K exp(G_C - G))^T u
    b_kdec = tl.exp(b_gl - b_g)
    b_dk = tl.dot(tl.trans(b_dps.to(DT)), b_q.to(DT), input_precision=PREC) + b_dkd * b_kdec[:, None]
    b_zk = tl.sum(b_dkd * b_k, 1) * b_kdec
    b_dg -= b_zk
    b_dg += tl.where(o_t == BT - 1, tl.sum(b_hdh, 0) * tl.exp(b_gl) + tl.sum(b_zk, 0), 0.)
    tl.store(dk + p_qk, b_dk + tl.load(dk + p_qk, mask=m, other=0.), mask=m)
    tl.store(dg + t * H, b_dg + tl.load(dg + t * H))


def _blocks(K: int, V: int):
    if K > 256 or V > 256:
        raise ValueError(f"the triton backend of gated_delta_rule supports K, V <= 256, got K={K}, V={V}")
    return max(16, triton.next_power_of_2(K)), min(64, max(16, triton.next_power_of_2(V)))


def _chunk_cumsum(log_alpha: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """The cumulative sum of ``log_alpha`` (B, L, H) inside each chunk, float32, padded with zeros to (B, n BT, H)."""
    batch, length, heads = log_alpha.shape
    g = F.pad(log_alpha.float(), (0, 0, 0, n_chunks * BT - length))
    return g.view(batch, n_chunks, BT, heads).cumsum(2).view(batch, n_chunks * BT, heads)


def _states(k, w, u, gc, h0, n_chunks, bk, bv, dt):
    """The memory entering every chunk (B H, n, K, V), the corrected values u - W S (B H, n BT, V), the final state."""
    batch, length, heads, key_dim = k.shape
    value_dim = u.shape[-1]
    h = k.new_empty(batch * heads, n_chunks, key_dim, value_dim, dtype=torch.float32)
    vn = torch.empty_like(u)
    ht = k.new_empty(batch, heads, key_dim, value_dim, dtype=torch.float32)
    bv = min(32, bv)  # more programs for the sequential pass, and fewer live registers
    _fwd_h[(triton.cdiv(value_dim, bv), batch * heads)](
        k, w, u, gc, h, vn, h0 if h0 is not None else ht, ht, length, gc.shape[1], n_chunks, heads, key_dim,
        value_dim, BT=BT, BK=bk, BV=bv, HAS_H0=h0 is not None, **dt, **WIDE)
    return h, vn, ht


class _GatedDeltaRule(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, beta, log_alpha, h0, scale):
        batch, length, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        bk, bv = _blocks(key_dim, value_dim)
        dt = dot_args(q, _fwd_h)
        n_chunks = triton.cdiv(length, BT)
        lp = n_chunks * BT
        gc = _chunk_cumsum(log_alpha, n_chunks) if log_alpha is not None else \
            q.new_zeros(batch, lp, heads, dtype=torch.float32)
        T = q.new_empty(batch * heads, lp, BT, dtype=torch.float32)
        w = q.new_empty(batch * heads, lp, key_dim, dtype=torch.float32)
        u = q.new_empty(batch * heads, lp, value_dim, dtype=torch.float32)
        _fwd_wy[(n_chunks, batch * heads)](k, v, beta, gc, T, w, u, length, lp, heads, key_dim, value_dim, BT=BT,
                                           BC=BC, BK=bk, BV=bv, **dt, **WIDE)
        h, vn, ht = _states(k, w, u, gc, h0, n_chunks, bk, bv, dt)
        o = torch.empty_like(v)
        _fwd_o[(triton.cdiv(value_dim, bv), n_chunks, batch * heads)](
            q, k, gc, h, vn, o, scale, length, lp, n_chunks, heads, key_dim, value_dim, BT=BT, BK=bk, BV=bv, **dt,
            **WIDE)
        ctx.save_for_backward(q, k, v, beta, gc, h0, T, w, u)
        ctx.scale = scale
        ctx.has_log_alpha = log_alpha is not None
        ctx.log_alpha_dtype = None if log_alpha is None else log_alpha.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, gc, h0, T, w, u = ctx.saved_tensors
        scale = ctx.scale
        batch, length, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        bk, bv = _blocks(key_dim, value_dim)
        dt = dot_args(q, _fwd_h)
        n_chunks = triton.cdiv(length, BT)
        lp = gc.shape[1]
        do = do.contiguous()
        h, vn, ht = _states(k, w, u, gc, h0, n_chunks, bk, bv, dt)
        dh = torch.empty_like(h)
        dvn = torch.empty_like(vn)
        dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
        if dht is not None:
            dht = dht.contiguous()
        _bwd_dhu[(triton.cdiv(value_dim, min(32, bv)), batch * heads)](
            q, k, w, gc, do, dh, dvn, dht if dht is not None else ht, dh0 if dh0 is not None else ht, scale, length,
            lp, n_chunks, heads, key_dim, value_dim, BT=BT, BK=bk, BV=min(32, bv), HAS_DHT=dht is not None,
            HAS_DH0=h0 is not None, **dt, **WIDE)
        dq = q.new_empty(q.shape, dtype=torch.float32)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dbeta = beta.new_empty(beta.shape, dtype=torch.float32)
        dg = gc.new_empty(gc.shape)
        _bwd_wy[(n_chunks, batch * heads)](k, v, beta, gc, T, h, dvn, dk, dv, dbeta, dg, length, lp, n_chunks, heads,
                                           key_dim, value_dim, BT=BT, BK=bk, BV=bv, **dt, **WIDE)
        _bwd_qk[(n_chunks, batch * heads)](q, k, gc, h, dh, vn, do, dq, dk, dg, scale, length, lp, n_chunks, heads,
                                           key_dim, value_dim, BT=BT, BK=bk, BV=bv, **dt, **WIDE)
        dlog_alpha = None
        if ctx.has_log_alpha:
            dg = dg.view(batch, n_chunks, BT, heads).flip(2).cumsum(2).flip(2)
            dlog_alpha = dg.reshape(batch, lp, heads)[:, :length].to(ctx.log_alpha_dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dbeta.to(beta.dtype), dlog_alpha,
                None if h0 is None else dh0.to(h0.dtype), None)


def gated_delta_rule_triton(q, k, v, beta, log_alpha, *, scale, chunk_size=64, initial_state=None):
    """The ``triton`` backend of ``gated_delta_rule``; ``chunk_size`` is ignored (the kernels use chunks of 64)."""
    dtype = compute_dtype(q.dtype)
    q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
    log_alpha = None if log_alpha is None else log_alpha.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    o, state = _GatedDeltaRule.apply(q, k, v, beta, log_alpha, h0, float(scale))
    return o, state.to(dtype)
