"""Numba kernels of the selective scan; see :mod:`ssmlab.ops.selective_scan.numba`. Imported only when used."""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")


def constants(dtype) -> np.ndarray:
    """The kernels' constants in their own precision (float32 arithmetic stays float32 and vectorises twice as
    wide): 0, 1, the clamp of exp's argument, 1/2, log2(e), ln(2) in two parts (Cody and Waite), 1/2!, ..., 1/7!,
    and 1 to use the polynomial exponential (float32), 0 for ``math.exp``."""
    fast = 1.0 if dtype == np.float32 else 0.0
    values = [0.0, 1.0, -127 * math.log(2), 128 * math.log(2), 0.5, 1 / math.log(2), 0.693359375,
              math.log(2) - 0.693359375]
    return np.array(values + [1.0 / math.factorial(i) for i in range(2, 8)] + [fast], dtype=dtype)


# Without reassociation, which would undo the two-part reduction of the argument.
@numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def exp_row(x, A, n, g, out, bits, scale, k):
    """out[j] = exp(x[g, j] * A[n, g, j]) for j < P; x (G, P), A (N, G, P), out, bits, scale (P,).

    With the polynomial (``k[-1] == 1``, float32): for ``a = x A`` clamped to [-127 ln 2, 128 ln 2],
    2^i e^r with i = round(a log2 e) and r = a - i ln 2 (|r| <= ln(2) / 2), e^r by its Taylor polynomial
    of degree 7 and 2^i from its float32 bit pattern (written to ``bits``, read as ``scale``), which is 0
    for i = -127 (arguments below about -87.7 give 0) and infinity for i = 128 (above about 88.4).
    Otherwise ``math.exp``.
    """
    width = out.shape[0]
    if k[14] == k[0]:
        for j in range(width):
            out[j] = math.exp(x[g, j] * A[n, g, j])
        return
    one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
    for j in range(width):
        a = min(max(x[g, j] * A[n, g, j], lo), hi)
        # np.floor keeps float32; math.floor returns an integer, which turned the rest into float64 arithmetic.
        i = np.floor(a * log2e + half)
        r = (a - i * ln2_hi) - i * ln2_lo
        out[j] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        bits[j] = (np.int32(i) + np.int32(127)) << 23
    for j in range(width):
        out[j] *= scale[j]


# Channels are split as (G, P), P = D / G channels per group, and every inner loop runs over j in range(P):
# an index that provably starts at 0 lets the compiler drop Numba's negative-index wraparound and vectorise.


@_jit
def forward(u, dt, A, Bm, Cm, skip, gate, gated, h0, y, h_out, entering, chunk, k):
    """``y_t[g, j] = (sum_n C_t[g, n] h_t[n, g, j] + skip[g, j] u_t[g, j]) * gate_t[g, j]`` (no gate unless
    ``gated``).

    u, dt, y, gate (Bt, L, G, P); A (N, G, P); Bm, Cm (Bt, L, G, N); skip (G, P); h0, h_out (Bt, N, G, P);
    entering (Bt, ceil(L / chunk), N, G, P) receives the state before every ``chunk`` positions (or has 0
    chunks).
    """
    batch, length, groups, width = u.shape
    zero = k[0]
    n_state = A.shape[0]
    keep = entering.shape[1] > 0
    decay = np.empty(width, dtype=u.dtype)
    bits = np.empty(width, dtype=np.int32)
    scale = bits.view(np.float32)  # 2^i, written through ``bits``
    bu = np.empty((groups, width), dtype=u.dtype)
    out = np.empty((groups, width), dtype=u.dtype)
    h = np.empty((n_state, groups, width), dtype=u.dtype)
    for b in range(batch):
        h[:] = h0[b]
        for t in range(length):
            if keep and t % chunk == 0:
                entering[b, t // chunk] = h
            step = dt[b, t]
            for g in range(groups):
                for j in range(width):
                    bu[g, j] = step[g, j] * u[b, t, g, j]
                    out[g, j] = zero
            for n in range(n_state):
                for g in range(groups):
                    exp_row(step, A, n, g, decay, bits, scale, k)
                    b_n = Bm[b, t, g, n]
                    c_n = Cm[b, t, g, n]
                    for j in range(width):
                        hv = decay[j] * h[n, g, j] + bu[g, j] * b_n
                        h[n, g, j] = hv
                        out[g, j] += c_n * hv
            for g in range(groups):
                if gated:
                    for j in range(width):
                        y[b, t, g, j] = (out[g, j] + skip[g, j] * u[b, t, g, j]) * gate[b, t, g, j]
                else:
                    for j in range(width):
                        y[b, t, g, j] = out[g, j] + skip[g, j] * u[b, t, g, j]
        h_out[b] = h


@_jit
def backward(u, dt, A, Bm, Cm, skip, entering, chunk, dy, dh, du, ddt, dA, dB, dC, dh0, ungated, k):
    """Gradients given dy (Bt, L, G, P), the gradient of the output before the gate, and dh (Bt, N, G, P).

    Writes du (through the scan only, not the skip), ddt, dB, dC, dh0, adds to dA (zeros on entry), and
    writes the output before the gate to ``ungated`` (Bt, L, G, P). Chunk by chunk from the last: the chunk's
    states are recomputed from the state entering it.
    """
    batch, length, groups, width = u.shape
    zero = k[0]
    n_state = A.shape[0]
    states = np.empty((chunk + 1, n_state, groups, width), dtype=u.dtype)  # states[s + 1]: h at position s
    decays = np.empty((chunk, n_state, groups, width), dtype=u.dtype)
    decay = np.empty(width, dtype=u.dtype)
    bits = np.empty(width, dtype=np.int32)
    scale = bits.view(np.float32)
    bu = np.empty((groups, width), dtype=u.dtype)
    out = np.empty((groups, width), dtype=u.dtype)
    bu_grad = np.empty((groups, width), dtype=u.dtype)
    step_grad = np.empty((groups, width), dtype=u.dtype)
    through = np.empty(width, dtype=u.dtype)
    adj = np.empty((n_state, groups, width), dtype=u.dtype)
    for b in range(batch):
        adj[:] = dh[b]
        for c in range(entering.shape[1] - 1, -1, -1):
            start = c * chunk
            steps = min(chunk, length - start)
            states[0] = entering[b, c]
            for s in range(steps):
                t = start + s
                step = dt[b, t]
                for g in range(groups):
                    for j in range(width):
                        bu[g, j] = step[g, j] * u[b, t, g, j]
                        out[g, j] = skip[g, j] * u[b, t, g, j]
                for n in range(n_state):
                    for g in range(groups):
                        exp_row(step, A, n, g, decay, bits, scale, k)
                        b_n = Bm[b, t, g, n]
                        c_n = Cm[b, t, g, n]
                        for j in range(width):
                            decays[s, n, g, j] = decay[j]
                            hv = decay[j] * states[s, n, g, j] + bu[g, j] * b_n
                            states[s + 1, n, g, j] = hv
                            out[g, j] += c_n * hv
                for g in range(groups):
                    for j in range(width):
                        ungated[b, t, g, j] = out[g, j]
            for s in range(steps - 1, -1, -1):
                t = start + s
                step = dt[b, t]
                grad_y = dy[b, t]
                for g in range(groups):
                    for j in range(width):
                        bu[g, j] = step[g, j] * u[b, t, g, j]
                        bu_grad[g, j] = zero
                        step_grad[g, j] = zero
                for n in range(n_state):
                    for g in range(groups):
                        b_n = Bm[b, t, g, n]
                        c_n = Cm[b, t, g, n]
                        grad_b = zero
                        grad_c = zero
                        # Two loops rather than one: the compiler vectorises loops that touch fewer arrays better.
                        for j in range(width):
                            gn = adj[n, g, j] + grad_y[g, j] * c_n  # dloss/dh_t
                            grad_c += grad_y[g, j] * states[s + 1, n, g, j]
                            grad_b += gn * bu[g, j]
                            bu_grad[g, j] += gn * b_n
                            carried = gn * decays[s, n, g, j]
                            adj[n, g, j] = carried
                            through[j] = carried * states[s, n, g, j]  # dloss/d(delta A) at (t, n, g, j)
                        for j in range(width):
                            step_grad[g, j] += through[j] * A[n, g, j]
                            dA[n, g, j] += through[j] * step[g, j]
                        dB[b, t, g, n] = grad_b
                        dC[b, t, g, n] = grad_c
                for g in range(groups):
                    for j in range(width):
                        du[b, t, g, j] = bu_grad[g, j] * step[g, j]
                        ddt[b, t, g, j] = bu_grad[g, j] * u[b, t, g, j] + step_grad[g, j]
        dh0[b] = adj
