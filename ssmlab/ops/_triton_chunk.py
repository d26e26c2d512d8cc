"""Triton kernels of the chunked scalar-decay recurrence shared by ``ssd`` and ``linear_attention``.

For each batch b and head h (state (P, N), h reading the group g(h) of B and C)::

    h_t = exp(a_t) h_{t-1} + dt_t x_t B_t^T          y_t = h_t C_t + D x_t

SSD (Mamba-2, arXiv 2405.21060) has ``a_t = dt_t A[h]``; linear attention and
retention (arXiv 2006.16236, 2307.08621) have ``dt_t = 1`` and a constant
``a_t = log gamma[h]`` with x = v, B = k, C = q and the state transposed.

The kernels follow Mamba-2's chunked algorithm (its Section 6 and the official
``ssd_combined`` structure): in chunks of T positions, with ``c_t`` the
cumulative sum of ``a`` inside the chunk,

1. ``CB[t, s] = C_t . B_s`` per group and chunk (``_cb_kernel``);
2. the state each chunk makes from zero, ``sum_s exp(c_last - c_s) dt_s x_s B_s^T``
   (``_chunk_outer_kernel``);
3. the states entering the chunks, a sequential pass over the chunks
   (``_state_pass_fwd_kernel``);
4. the outputs: the masked quadratic form inside the chunk plus
   ``exp(c_t) C_t`` applied to the entering state (``_chunk_scan_fwd_kernel``).

The backward runs through the same pieces: the gradient of each entering state
from the chunk's own outputs (``_chunk_outer_kernel`` again), a reverse pass over
the chunks (``_state_pass_bwd_kernel``), then dx and ddt, dB and dC in one kernel
each. The gradient of the cumulative decays comes out of those without extra
work: ``dc_t = C_t . dC_t - dt_t x_t . g_t`` per head, with ``g_t`` the gradient of
``dt_t x_t`` (the row and column sums of the decayed quadratic form and of the
state terms) and, at each chunk's last position, the product of the state after
the chunk and its gradient; a reverse cumulative sum inside each chunk turns it
into the gradient of ``a``.

Accumulation is in float32 (float64 for float64 inputs); the matrix products run
``tl.dot`` on operands in the input dtype (bf16/fp16 at full tensor-core speed;
float32 in IEEE precision, or TF32 when PyTorch's float32 matmul precision allows it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _block(n: int, cap: int | None = None) -> int:
    """A power of two >= n and >= 16 (the smallest ``tl.dot`` operand), at most ``cap`` when given."""
    size = max(16, triton.next_power_of_2(n))
    return min(size, cap) if cap else size


@triton.jit
def _add(a, b):
    """The combination of the sums below. The kernels use only Triton's builtins: ``tl.reduce(x, axis, _add)``
    for ``tl.sum`` and ``tl.full`` for ``tl.zeros``, because the library's own jit functions (``tl.sum``,
    ``tl.zeros``, ``tl.cdiv``, ...) are compiled-only when ``triton`` was imported before TRITON_INTERPRET was
    set, and Triton's interpreter could not run the kernels then."""
    return a + b


@triton.jit
def _cb_kernel(C, B, CB, L, G: tl.constexpr, N: tl.constexpr, NC, T: tl.constexpr,
               BM: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
               ACC: tl.constexpr):
    """CB[b, c, g, t, s] = C_t . B_s for the positions t, s of chunk c (zero beyond L)."""
    c = tl.program_id(0)
    bg = tl.program_id(1).to(tl.int64)
    b, g = bg // G, bg % G
    n_s = (T + BS - 1) // BS
    m_blk, s_blk = tl.program_id(2) // n_s, tl.program_id(2) % n_s
    offs_m = m_blk * BM + tl.arange(0, BM)
    offs_s = s_blk * BS + tl.arange(0, BS)
    pos_m, pos_s = c * T + offs_m, c * T + offs_s
    ok_m, ok_s = (offs_m < T) & (pos_m < L), (offs_s < T) & (pos_s < L)
    acc = tl.full((BM, BS), 0.0, ACC)
    for k0 in range(0, N, BK):
        offs_k = k0 + tl.arange(0, BK)
        cm = tl.load(C + ((b * L + pos_m[:, None]) * G + g) * N + offs_k[None, :],
                     mask=ok_m[:, None] & (offs_k[None, :] < N), other=0.0)
        bs = tl.load(B + ((b * L + pos_s[None, :]) * G + g) * N + offs_k[:, None],
                     mask=ok_s[None, :] & (offs_k[:, None] < N), other=0.0)
        acc += tl.dot(cm.to(DOT), bs.to(DOT), input_precision=PREC)
    tl.store(CB + (((b * NC + c) * G + g) * T + offs_m[:, None]) * T + offs_s[None, :], acc,
             mask=(offs_m[:, None] < T) & (offs_s[None, :] < T))


@triton.jit
def _chunk_outer_kernel(U, V, DTP, CUM, OUT, L, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                        N: tl.constexpr, NC, T: tl.constexpr, FROM_START: tl.constexpr,
                        BP: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, DOT: tl.constexpr,
                        PREC: tl.constexpr, ACC: tl.constexpr):
    """OUT[b, c, h] = sum_t w_t U_t^T V_t (P, N) over the positions of chunk c.

    ``FROM_START=False``: U = x, V = B, ``w_t = exp(c_last - c_t) dt_t``: the state the chunk makes from zero.
    ``FROM_START=True``: U = dy, V = C, ``w_t = exp(c_t)``: the gradient of the state entering the chunk
    from the chunk's own outputs.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // (H // G)
    n_n = (N + BN - 1) // BN
    p_blk, n_blk = tl.program_id(2) // n_n, tl.program_id(2) % n_n
    offs_p = p_blk * BP + tl.arange(0, BP)
    offs_n = n_blk * BN + tl.arange(0, BN)
    row = (b * H + h) * NC * T + c * T
    c_last = tl.load(CUM + row + T - 1).to(ACC)
    acc = tl.full((BP, BN), 0.0, ACC)
    for s0 in range(0, T, BS):
        offs_s = s0 + tl.arange(0, BS)
        pos = c * T + offs_s
        ok = (offs_s < T) & (pos < L)
        cum = tl.load(CUM + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
        if FROM_START:
            w = tl.exp(cum)
        else:
            w = tl.exp(c_last - cum) * tl.load(DTP + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
        u = tl.load(U + ((b * L + pos[None, :]) * H + h) * P + offs_p[:, None],
                    mask=ok[None, :] & (offs_p[:, None] < P), other=0.0)
        v = tl.load(V + ((b * L + pos[:, None]) * G + g) * N + offs_n[None, :],
                    mask=ok[:, None] & (offs_n[None, :] < N), other=0.0).to(ACC)
        acc += tl.dot(u.to(DOT), (v * w[:, None]).to(DOT), input_precision=PREC)
    tl.store(OUT + (((b * NC + c) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :], acc,
             mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))


@triton.jit
def _state_pass_fwd_kernel(STATES, CUM, INIT, FINAL, H: tl.constexpr, PN: tl.constexpr, NC, T: tl.constexpr,
                           HAS_INIT: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """In place: STATES[b, c, h] (the chunk's own state) becomes the state entering chunk c; FINAL the last one."""
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    if HAS_INIT:
        state = tl.load(INIT + bh * PN + offs, mask=ok, other=0.0).to(ACC)
    else:
        state = tl.full((BLOCK,), 0.0, ACC)
    for c in range(0, NC):
        ptr = STATES + ((b * NC + c) * H + h) * PN + offs
        own = tl.load(ptr, mask=ok, other=0.0)
        tl.store(ptr, state, mask=ok)
        decay = tl.exp(tl.load(CUM + bh * NC * T + c * T + T - 1).to(ACC))
        state = decay * state + own
    tl.store(FINAL + bh * PN + offs, state, mask=ok)


@triton.jit
def _chunk_scan_fwd_kernel(X, DTP, CUM, C, CB, ENTER, D, Y, L, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                           N: tl.constexpr, NC, T: tl.constexpr, HAS_D: tl.constexpr, BM: tl.constexpr,
                           BS: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
                           PREC: tl.constexpr, ACC: tl.constexpr):
    """y_t = exp(c_t) C_t h_enter + sum_{s <= t} exp(c_t - c_s) CB[t, s] dt_s x_s + D x_t in chunk c."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // (H // G)
    n_p = (P + BP - 1) // BP
    m_blk, p_blk = tl.program_id(2) // n_p, tl.program_id(2) % n_p
    offs_m = m_blk * BM + tl.arange(0, BM)
    offs_p = p_blk * BP + tl.arange(0, BP)
    pos_m = c * T + offs_m
    ok_m = (offs_m < T) & (pos_m < L)
    row = (b * H + h) * NC * T + c * T
    cum_m = tl.load(CUM + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
    acc = tl.full((BM, BP), 0.0, ACC)
    enter = ENTER + ((b * NC + c) * H + h) * P * N
    for k0 in range(0, N, BK):
        offs_k = k0 + tl.arange(0, BK)
        cm = tl.load(C + ((b * L + pos_m[:, None]) * G + g) * N + offs_k[None, :],
                     mask=ok_m[:, None] & (offs_k[None, :] < N), other=0.0)
        st = tl.load(enter + offs_p[None, :] * N + offs_k[:, None],
                     mask=(offs_p[None, :] < P) & (offs_k[:, None] < N), other=0.0)
        acc += tl.dot(cm.to(DOT), st.to(DOT), input_precision=PREC)
    acc *= tl.exp(cum_m)[:, None]
    cb_base = CB + ((b * NC + c) * G + g) * T * T
    for s0 in range(0, (m_blk + 1) * BM, BS):
        offs_s = s0 + tl.arange(0, BS)
        pos_s = c * T + offs_s
        ok_s = (offs_s < T) & (pos_s < L)
        cum_s = tl.load(CUM + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
        dt_s = tl.load(DTP + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
        cb = tl.load(cb_base + offs_m[:, None] * T + offs_s[None, :],
                     mask=(offs_m[:, None] < T) & (offs_s[None, :] < T), other=0.0).to(ACC)
        causal = offs_s[None, :] <= offs_m[:, None]
        w = cb * tl.exp(tl.where(causal, cum_m[:, None] - cum_s[None, :], float("-inf"))) * dt_s[None, :]
        xs = tl.load(X + ((b * L + pos_s[:, None]) * H + h) * P + offs_p[None, :],
                     mask=ok_s[:, None] & (offs_p[None, :] < P), other=0.0)
        acc += tl.dot(w.to(DOT), xs.to(DOT), input_precision=PREC)
    if HAS_D:
        xm = tl.load(X + ((b * L + pos_m[:, None]) * H + h) * P + offs_p[None, :],
                     mask=ok_m[:, None] & (offs_p[None, :] < P), other=0.0).to(ACC)
        acc += xm * tl.load(D + h * P + offs_p, mask=offs_p < P, other=0.0).to(ACC)[None, :]
    tl.store(Y + ((b * L + pos_m[:, None]) * H + h) * P + offs_p[None, :], acc,
             mask=ok_m[:, None] & (offs_p[None, :] < P))


@triton.jit
def _state_pass_bwd_kernel(DSTATES, ENTER, FINAL, CUM, DFINAL, DINIT, DCLAST, H: tl.constexpr, PN: tl.constexpr,
                           NC, T: tl.constexpr, NBLK, HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr,
                           ACC: tl.constexpr):
    """Reverse pass over the chunks, in place: DSTATES[b, c, h] (the gradient of the state entering chunk c from
    the chunk's outputs) becomes the gradient of the state after chunk c; DINIT gets the initial state's.

    DCLAST[b, h, c, block] gets this block's part of ``sum(state after chunk c * its gradient)``, the gradient of
    the chunk's total log-decay (through the chunk's own state and the decay of the entering one).
    """
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    if HAS_DFINAL:
        grad = tl.load(DFINAL + bh * PN + offs, mask=ok, other=0.0).to(ACC)
    else:
        grad = tl.full((BLOCK,), 0.0, ACC)
    after = tl.load(FINAL + bh * PN + offs, mask=ok, other=0.0).to(ACC)
    for i in range(0, NC):
        c = NC - 1 - i
        tl.store(DCLAST + (bh * NC + c) * NBLK + blk, tl.reduce(grad * after, 0, _add))
        ptr = DSTATES + ((b * NC + c) * H + h) * PN + offs
        local = tl.load(ptr, mask=ok, other=0.0).to(ACC)
        tl.store(ptr, grad, mask=ok)
        after = tl.load(ENTER + ((b * NC + c) * H + h) * PN + offs, mask=ok, other=0.0).to(ACC)
        decay = tl.exp(tl.load(CUM + bh * NC * T + c * T + T - 1).to(ACC))
        grad = local + decay * grad
    tl.store(DINIT + bh * PN + offs, grad, mask=ok)


@triton.jit
def _dx_kernel(X, DTP, CUM, B, CB, DAFTER, DY, D, DX, DDT, L, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
               N: tl.constexpr, NC, T: tl.constexpr, HAS_D: tl.constexpr, BM: tl.constexpr, BT: tl.constexpr,
               BP: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
               ACC: tl.constexpr):
    """For the sources s of a block: ``g_s = dL/d(dt_s x_s) = exp(c_last - c_s) dH_after B_s
    + sum_{t >= s} exp(c_t - c_s) CB[t, s] dy_t``; ``dx_s = dt_s g_s + D dy_s``, ``ddt_s = x_s . g_s``."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // (H // G)
    m_blk = tl.program_id(2)
    offs_m = m_blk * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    pos_m = c * T + offs_m
    ok_m = (offs_m < T) & (pos_m < L)
    row = (b * H + h) * NC * T + c * T
    cum_m = tl.load(CUM + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
    c_last = tl.load(CUM + row + T - 1).to(ACC)
    acc = tl.full((BM, BP), 0.0, ACC)
    dafter = DAFTER + ((b * NC + c) * H + h) * P * N
    for k0 in range(0, N, BK):
        offs_k = k0 + tl.arange(0, BK)
        bm = tl.load(B + ((b * L + pos_m[:, None]) * G + g) * N + offs_k[None, :],
                     mask=ok_m[:, None] & (offs_k[None, :] < N), other=0.0)
        da = tl.load(dafter + offs_p[None, :] * N + offs_k[:, None],
                     mask=(offs_p[None, :] < P) & (offs_k[:, None] < N), other=0.0)
        acc += tl.dot(bm.to(DOT), da.to(DOT), input_precision=PREC)
    acc *= tl.exp(c_last - cum_m)[:, None]
    cb_base = CB + ((b * NC + c) * G + g) * T * T
    for t0 in range(m_blk * BM, T, BT):
        offs_t = t0 + tl.arange(0, BT)
        pos_t = c * T + offs_t
        ok_t = (offs_t < T) & (pos_t < L)
        cum_t = tl.load(CUM + row + offs_t, mask=offs_t < T, other=0.0).to(ACC)
        cbt = tl.load(cb_base + offs_t[None, :] * T + offs_m[:, None],
                      mask=(offs_t[None, :] < T) & (offs_m[:, None] < T), other=0.0).to(ACC)
        causal = offs_t[None, :] >= offs_m[:, None]
        w = cbt * tl.exp(tl.where(causal, cum_t[None, :] - cum_m[:, None], float("-inf")))
        dyt = tl.load(DY + ((b * L + pos_t[:, None]) * H + h) * P + offs_p[None, :],
                      mask=ok_t[:, None] & (offs_p[None, :] < P), other=0.0)
        acc += tl.dot(w.to(DOT), dyt.to(DOT), input_precision=PREC)
    xy_off = ((b * L + pos_m[:, None]) * H + h) * P + offs_p[None, :]
    xy_ok = ok_m[:, None] & (offs_p[None, :] < P)
    xm = tl.load(X + xy_off, mask=xy_ok, other=0.0).to(ACC)
    dt_m = tl.load(DTP + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
    tl.store(DDT + row + offs_m, tl.reduce(acc * xm, 1, _add), mask=offs_m < T)
    dx = acc * dt_m[:, None]
    if HAS_D:
        dym = tl.load(DY + xy_off, mask=xy_ok, other=0.0).to(ACC)
        dx += dym * tl.load(D + h * P + offs_p, mask=offs_p < P, other=0.0).to(ACC)[None, :]
    tl.store(DX + xy_off, dx, mask=xy_ok)


@triton.jit
def _db_kernel(X, DTP, CUM, C, DAFTER, DY, DB, L, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
               N: tl.constexpr, NC, T: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BT: tl.constexpr,
               BN: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """dB_s = sum over heads of ``dt_s (exp(c_last - c_s) x_s dH_after + sum_{t >= s} exp(c_t - c_s) (dy_t . x_s)
    C_t)``: the heads of a group in SPLIT parts, one part to a program, written side by side and summed afterwards."""
    c = tl.program_id(0)
    bgs = tl.program_id(1).to(tl.int64)
    b, g, split = bgs // (G * SPLIT), (bgs // SPLIT) % G, bgs % SPLIT
    m_blk = tl.program_id(2)
    offs_m = m_blk * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    pos_m = c * T + offs_m
    ok_m = (offs_m < T) & (pos_m < L)
    total = tl.full((BM, BN), 0.0, ACC)
    for j in range(0, H // G // SPLIT):
        h = g * (H // G) + split * (H // G // SPLIT) + j
        row = (b * H + h) * NC * T + c * T
        cum_m = tl.load(CUM + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
        c_last = tl.load(CUM + row + T - 1).to(ACC)
        dafter = DAFTER + ((b * NC + c) * H + h) * P * N
        acc = tl.full((BM, BN), 0.0, ACC)
        for k0 in range(0, P, BK):
            offs_k = k0 + tl.arange(0, BK)
            xm = tl.load(X + ((b * L + pos_m[:, None]) * H + h) * P + offs_k[None, :],
                         mask=ok_m[:, None] & (offs_k[None, :] < P), other=0.0)
            da = tl.load(dafter + offs_k[:, None] * N + offs_n[None, :],
                         mask=(offs_k[:, None] < P) & (offs_n[None, :] < N), other=0.0)
            acc += tl.dot(xm.to(DOT), da.to(DOT), input_precision=PREC)
        acc *= tl.exp(c_last - cum_m)[:, None]
        for t0 in range(m_blk * BM, T, BT):
            offs_t = t0 + tl.arange(0, BT)
            pos_t = c * T + offs_t
            ok_t = (offs_t < T) & (pos_t < L)
            cum_t = tl.load(CUM + row + offs_t, mask=offs_t < T, other=0.0).to(ACC)
            xdy = tl.full((BM, BT), 0.0, ACC)
            for k0 in range(0, P, BK):
                offs_k = k0 + tl.arange(0, BK)
                xm = tl.load(X + ((b * L + pos_m[:, None]) * H + h) * P + offs_k[None, :],
                             mask=ok_m[:, None] & (offs_k[None, :] < P), other=0.0)
                dyt = tl.load(DY + ((b * L + pos_t[None, :]) * H + h) * P + offs_k[:, None],
                              mask=ok_t[None, :] & (offs_k[:, None] < P), other=0.0)
                xdy += tl.dot(xm.to(DOT), dyt.to(DOT), input_precision=PREC)
            causal = offs_t[None, :] >= offs_m[:, None]
            w = xdy * tl.exp(tl.where(causal, cum_t[None, :] - cum_m[:, None], float("-inf")))
            ct = tl.load(C + ((b * L + pos_t[:, None]) * G + g) * N + offs_n[None, :],
                         mask=ok_t[:, None] & (offs_n[None, :] < N), other=0.0)
            acc += tl.dot(w.to(DOT), ct.to(DOT), input_precision=PREC)
        dt_m = tl.load(DTP + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
        total += acc * dt_m[:, None]
    tl.store(DB + (((b * L + pos_m[:, None]) * G + g) * SPLIT + split) * N + offs_n[None, :], total,
             mask=ok_m[:, None] & (offs_n[None, :] < N))


@triton.jit
def _dc_kernel(X, DTP, CUM, B, C, ENTER, DY, DC, DCUM, L, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
               N: tl.constexpr, NC, T: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr,
               BN: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """dC_t = sum over heads of ``exp(c_t) dy_t H_enter + sum_{s <= t} exp(c_t - c_s) dt_s (dy_t . x_s) B_s`` (the
    heads of a group in SPLIT parts as in ``_db_kernel``); DCUM[b, h, t] = C_t . (head h's part of dC_t), the row
    sum of the quadratic form plus the state's part."""
    c = tl.program_id(0)
    bgs = tl.program_id(1).to(tl.int64)
    b, g, split = bgs // (G * SPLIT), (bgs // SPLIT) % G, bgs % SPLIT
    m_blk = tl.program_id(2)
    offs_m = m_blk * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    pos_m = c * T + offs_m
    ok_m = (offs_m < T) & (pos_m < L)
    cm = tl.load(C + ((b * L + pos_m[:, None]) * G + g) * N + offs_n[None, :],
                 mask=ok_m[:, None] & (offs_n[None, :] < N), other=0.0).to(ACC)
    total = tl.full((BM, BN), 0.0, ACC)
    for j in range(0, H // G // SPLIT):
        h = g * (H // G) + split * (H // G // SPLIT) + j
        row = (b * H + h) * NC * T + c * T
        cum_m = tl.load(CUM + row + offs_m, mask=offs_m < T, other=0.0).to(ACC)
        enter = ENTER + ((b * NC + c) * H + h) * P * N
        acc = tl.full((BM, BN), 0.0, ACC)
        for k0 in range(0, P, BK):
            offs_k = k0 + tl.arange(0, BK)
            dym = tl.load(DY + ((b * L + pos_m[:, None]) * H + h) * P + offs_k[None, :],
                          mask=ok_m[:, None] & (offs_k[None, :] < P), other=0.0)
            st = tl.load(enter + offs_k[:, None] * N + offs_n[None, :],
                         mask=(offs_k[:, None] < P) & (offs_n[None, :] < N), other=0.0)
            acc += tl.dot(dym.to(DOT), st.to(DOT), input_precision=PREC)
        acc *= tl.exp(cum_m)[:, None]
        for s0 in range(0, (m_blk + 1) * BM, BS):
            offs_s = s0 + tl.arange(0, BS)
            pos_s = c * T + offs_s
            ok_s = (offs_s < T) & (pos_s < L)
            cum_s = tl.load(CUM + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
            dt_s = tl.load(DTP + row + offs_s, mask=offs_s < T, other=0.0).to(ACC)
            dyx = tl.full((BM, BS), 0.0, ACC)
            for k0 in range(0, P, BK):
                offs_k = k0 + tl.arange(0, BK)
                dym = tl.load(DY + ((b * L + pos_m[:, None]) * H + h) * P + offs_k[None, :],
                              mask=ok_m[:, None] & (offs_k[None, :] < P), other=0.0)
                xs = tl.load(X + ((b * L + pos_s[None, :]) * H + h) * P + offs_k[:, None],
                             mask=ok_s[None, :] & (offs_k[:, None] < P), other=0.0)
                dyx += tl.dot(dym.to(DOT), xs.to(DOT), input_precision=PREC)
            causal = offs_s[None, :] <= offs_m[:, None]
            w = dyx * tl.exp(tl.where(causal, cum_m[:, None] - cum_s[None, :], float("-inf"))) * dt_s[None, :]
            bs = tl.load(B + ((b * L + pos_s[:, None]) * G + g) * N + offs_n[None, :],
                         mask=ok_s[:, None] & (offs_n[None, :] < N), other=0.0)
            acc += tl.dot(w.to(DOT), bs.to(DOT), input_precision=PREC)
        tl.store(DCUM + row + offs_m, tl.reduce(acc * cm, 1, _add), mask=offs_m < T)
        total += acc
    tl.store(DC + (((b * L + pos_m[:, None]) * G + g) * SPLIT + split) * N + offs_n[None, :], total,
             mask=ok_m[:, None] & (offs_n[None, :] < N))


_BLOCK_M = 64  # positions of a chunk per block: a chunk of T > 64 is several blocks


class _Plan:
    """Sizes, block sizes and dtypes of one call."""

    def __init__(self, x, B, chunk_size):
        self.batch, self.length, self.heads, self.p = x.shape
        self.groups, self.n = B.shape[2], B.shape[3]
        self.t = _block(chunk_size, 256)
        self.nc = triton.cdiv(self.length, self.t)
        self.acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.acc = _TL_DTYPES[self.acc_torch]
        self.dot = _TL_DTYPES[x.dtype]
        self.bm = min(self.t, _BLOCK_M)
        self.bp = _block(self.p)
        self.bn = _block(self.n)
        self.bk_n = _block(self.n, 64)
        self.bk_p = _block(self.p, 64)
        # The backward kernels that hold a whole (BM, P) or (BM, N) block or two: more warps, fewer registers each.
        self.warps = 8 if self.bm * max(self.bp, self.bn) >= 64 * 128 else 4
        # float32 products as PyTorch's matmuls: IEEE unless TF32 is allowed (torch.set_float32_matmul_precision).
        self.prec = "tf32" if x.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" \
            else "ieee"


def _per_position(dt, a, plan):
    """dt and the cumulative log-decay inside each chunk, both (B, H, NC * T) in the accumulation dtype, zero
    (no input, no decay) on the padding after L."""
    pad = plan.nc * plan.t - plan.length
    dtp = torch.nn.functional.pad(dt.to(plan.acc_torch).transpose(1, 2), (0, pad))  # (B, H, NC*T)
    ap = torch.nn.functional.pad(a.to(plan.acc_torch).transpose(1, 2), (0, pad))
    cum = ap.unflatten(-1, (plan.nc, plan.t)).cumsum(-1).flatten(-2)
    return dtp.contiguous(), cum.contiguous()


def _cb(B, C, plan):
    cb = torch.empty(plan.batch, plan.nc, plan.groups, plan.t, plan.t, device=B.device, dtype=plan.acc_torch)
    grid = (plan.nc, plan.batch * plan.groups, triton.cdiv(plan.t, plan.bm) ** 2)
    _cb_kernel[grid](C, B, cb, plan.length, plan.groups, plan.n, plan.nc, plan.t, BM=plan.bm, BS=plan.bm,
                     BK=plan.bk_n, DOT=plan.dot, PREC=plan.prec, ACC=plan.acc)
    return cb


def _chunk_outer(U, V, dtp, cum, plan, from_start):
    out = torch.empty(plan.batch, plan.nc, plan.heads, plan.p, plan.n, device=U.device, dtype=plan.acc_torch)
    bp, bn = _block(plan.p, 64), _block(plan.n, 64)
    grid = (plan.nc, plan.batch * plan.heads, triton.cdiv(plan.p, bp) * triton.cdiv(plan.n, bn))
    _chunk_outer_kernel[grid](U, V, dtp, cum, out, plan.length, plan.heads, plan.groups, plan.p, plan.n, plan.nc,
                              plan.t, FROM_START=from_start, BP=bp, BN=bn, BS=plan.bm, DOT=plan.dot, PREC=plan.prec,
                              ACC=plan.acc)
    return out


_STATE_BLOCK = 1024
_PROGRAMS = 1024  # enough programs to fill an H100/H200 several times over


def _head_split(plan, n_m):
    """Into how many programs the heads of a group are split by the dB and dC kernels (a divisor of H / G): the
    fewest that make ``_PROGRAMS`` programs, so that one group (Mamba-2's usual) still fills the GPU; the parts are
    summed afterwards."""
    per_group = plan.heads // plan.groups
    programs = plan.nc * plan.batch * plan.groups * n_m
    for split in range(1, per_group + 1):
        if per_group % split == 0 and programs * split >= _PROGRAMS:
            return split
    return per_group


def chunk_forward(x, dt, a, B, C, D, initial_state, chunk_size):
    """Run the recurrence: x (B, L, H, P), dt and a (B, L, H), B and C (B, L, G, N), D (H, P) or None,
    initial_state (B, H, P, N) or None. Returns y (B, L, H, P) in x's dtype, the final state (B, H, P, N) in the
    accumulation dtype, and what the backward needs."""
    plan = _Plan(x, B, chunk_size)
    x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
    dtp, cum = _per_position(dt, a, plan)
    cb = _cb(B, C, plan)
    states = _chunk_outer(x, B, dtp, cum, plan, from_start=False)
    final = torch.empty(plan.batch, plan.heads, plan.p, plan.n, device=x.device, dtype=plan.acc_torch)
    pn = plan.p * plan.n
    init = initial_state.contiguous() if initial_state is not None else final
    _state_pass_fwd_kernel[(plan.batch * plan.heads, triton.cdiv(pn, _STATE_BLOCK))](
        states, cum, init, final, plan.heads, pn, plan.nc, plan.t, HAS_INIT=initial_state is not None,
        BLOCK=_STATE_BLOCK, ACC=plan.acc)
    y = torch.empty_like(x)
    d = D.contiguous() if D is not None else dtp
    bp = _block(plan.p, 64)
    grid = (plan.nc, plan.batch * plan.heads, triton.cdiv(plan.t, plan.bm) * triton.cdiv(plan.p, bp))
    _chunk_scan_fwd_kernel[grid](x, dtp, cum, C, cb, states, d, y, plan.length, plan.heads, plan.groups, plan.p,
                                 plan.n, plan.nc, plan.t, HAS_D=D is not None, BM=plan.bm, BS=plan.bm, BP=bp,
                                 BK=plan.bk_n, DOT=plan.dot, PREC=plan.prec, ACC=plan.acc)
    return y, final, (dtp, cum, cb, states)


def chunk_backward(dy, dfinal, x, B, C, D, saved, final, chunk_size):
    """Gradients of the recurrence given dy (B, L, H, P) and dfinal (B, H, P, N) or None.

    Returns dx, ddt (B, L, H) (the gradient of dt with the decay held fixed), da (B, L, H) (the gradient of the
    per-position log-decay), dB, dC, dD (H, P) or None, d_initial_state (B, H, P, N).
    """
    plan = _Plan(x, B, chunk_size)
    dtp, cum, cb, enter = saved
    x, B, C, dy = x.contiguous(), B.contiguous(), C.contiguous(), dy.contiguous()
    dafter = _chunk_outer(dy, C, dtp, cum, plan, from_start=True)
    pn = plan.p * plan.n
    nblk = triton.cdiv(pn, _STATE_BLOCK)
    dclast = torch.empty(plan.batch, plan.heads, plan.nc, nblk, device=x.device, dtype=plan.acc_torch)
    dinit = torch.empty(plan.batch, plan.heads, plan.p, plan.n, device=x.device, dtype=plan.acc_torch)
    dfin = dfinal.contiguous() if dfinal is not None else dinit
    _state_pass_bwd_kernel[(plan.batch * plan.heads, nblk)](
        dafter, enter, final, cum, dfin, dinit, dclast, plan.heads, pn, plan.nc, plan.t, nblk,
        HAS_DFINAL=dfinal is not None, BLOCK=_STATE_BLOCK, ACC=plan.acc)

    n_m = triton.cdiv(plan.t, plan.bm)
    dx = torch.empty_like(x)
    ddt = torch.empty_like(dtp)
    d = D.contiguous() if D is not None else dtp
    _dx_kernel[(plan.nc, plan.batch * plan.heads, n_m)](
        x, dtp, cum, B, cb, dafter, dy, d, dx, ddt, plan.length, plan.heads, plan.groups, plan.p, plan.n, plan.nc,
        plan.t, HAS_D=D is not None, BM=plan.bm, BT=plan.bm, BP=plan.bp, BK=plan.bk_n, DOT=plan.dot, PREC=plan.prec,
        ACC=plan.acc, num_warps=plan.warps)
    split = _head_split(plan, n_m)
    dB = torch.empty(plan.batch, plan.length, plan.groups, split, plan.n, device=x.device, dtype=plan.acc_torch)
    _db_kernel[(plan.nc, plan.batch * plan.groups * split, n_m)](
        x, dtp, cum, C, dafter, dy, dB, plan.length, plan.heads, plan.groups, plan.p, plan.n, plan.nc, plan.t, split,
        BM=plan.bm, BT=plan.bm, BN=plan.bn, BK=plan.bk_p, DOT=plan.dot, PREC=plan.prec, ACC=plan.acc,
        num_warps=plan.warps)
    dC = torch.empty_like(dB)
    dcum = torch.empty_like(dtp)
    _dc_kernel[(plan.nc, plan.batch * plan.groups * split, n_m)](
        x, dtp, cum, B, C, enter, dy, dC, dcum, plan.length, plan.heads, plan.groups, plan.p, plan.n, plan.nc,
        plan.t, split, BM=plan.bm, BS=plan.bm, BN=plan.bn, BK=plan.bk_p, DOT=plan.dot, PREC=plan.prec, ACC=plan.acc,
        num_warps=plan.warps)

    # dcum: row sums (from dC) minus column sums (x . g = ddt dt), plus the chunk totals at each last position.
    dcum = (dcum - ddt * dtp).unflatten(-1, (plan.nc, plan.t))
    dcum[..., -1] += dclast.sum(-1)
    da = dcum.flip(-1).cumsum(-1).flip(-1).flatten(-2)[..., :plan.length].transpose(1, 2)  # (B, L, H)
    ddt = ddt[..., :plan.length].transpose(1, 2)
    dB, dC = dB.sum(3).to(B.dtype), dC.sum(3).to(C.dtype)
    dD = None
    if D is not None:
        dD = torch.einsum("blhp,blhp->hp", dy.to(plan.acc_torch), x.to(plan.acc_torch))
    return dx, ddt, da, dB, dC, dD, dinit
