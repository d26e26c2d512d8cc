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
def exp_row(x, A, n, out, bits, scale, k):
    """out[d] = exp(x[d] * A[n, d]).

    With the polynomial (``k[-1] == 1``, float32): for ``a = x A`` clamped to [-127 ln 2, 128 ln 2],
    2^j e^r with j = round(a log2 e) and r = a - j ln 2 (|r| <= ln(2) / 2), e^r by its Taylor polynomial
    of degree 7 and 2^j from its float32 bit pattern (written to ``bits``, read as ``scale``), which is 0
    for j = -127 (arguments below about -87.7 give 0) and infinity for j = 128 (above about 88.4).
    Otherwise ``math.exp``.
    """
    channels = x.shape[0]
    if k[14] == k[0]:
        for d in range(channels):
            out[d] = math.exp(x[d] * A[n, d])
        return
    one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
    for d in range(channels):
        a = min(max(x[d] * A[n, d], lo), hi)
        j = math.floor(a * log2e + half)
        r = (a - j * ln2_hi) - j * ln2_lo
        out[d] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        bits[d] = (np.int32(j) + np.int32(127)) << 23
    for d in range(channels):
        out[d] *= scale[d]


@_jit
def forward(u, dt, A, Bm, Cm, skip, gate, gated, h0, y, h_out, entering, chunk, k):
    """``y_t[d] = (sum_n C_t[n] h_t[n, d] + skip[d] u_t[d]) * gate_t[d]`` (no gate unless ``gated``).

    u, dt, y, gate (Bt, L, D); A (N, D); Bm, Cm (Bt, L, G, N); skip (D,); h0, h_out (Bt, N, D); entering
    (Bt, ceil(L / chunk), N, D) receives the state before every ``chunk`` positions (or has 0 chunks).
    """
    batch, length, channels = u.shape
    zero = k[0]
    n_state = A.shape[0]
    groups = Bm.shape[2]
    per_group = channels // groups
    keep = entering.shape[1] > 0
    decay = np.empty(channels, dtype=u.dtype)
    bits = np.empty(channels, dtype=np.int32)
    scale = bits.view(np.float32)  # 2^k, written through ``bits``
    bu = np.empty(channels, dtype=u.dtype)
    out = np.empty(channels, dtype=u.dtype)
    h = np.empty((n_state, channels), dtype=u.dtype)
    for b in range(batch):
        h[:, :] = h0[b]
        for t in range(length):
            if keep and t % chunk == 0:
                entering[b, t // chunk] = h
            step = dt[b, t]
            for d in range(channels):
                bu[d] = step[d] * u[b, t, d]
                out[d] = zero
            for n in range(n_state):
                exp_row(step, A, n, decay, bits, scale, k)
                for g in range(groups):
                    b_n = Bm[b, t, g, n]
                    c_n = Cm[b, t, g, n]
                    for d in range(g * per_group, (g + 1) * per_group):
                        hv = decay[d] * h[n, d] + bu[d] * b_n
                        h[n, d] = hv
                        out[d] += c_n * hv
            if gated:
                for d in range(channels):
                    y[b, t, d] = (out[d] + skip[d] * u[b, t, d]) * gate[b, t, d]
            else:
                for d in range(channels):
                    y[b, t, d] = out[d] + skip[d] * u[b, t, d]
        h_out[b] = h


@_jit
def backward(u, dt, A, Bm, Cm, skip, entering, chunk, dy, dh, du, ddt, dA, dB, dC, dh0, ungated, k):
    """Gradients given dy (Bt, L, D), the gradient of the output before the gate, and dh (Bt, N, D).

    Writes du (through the scan only, not the skip), ddt, dB, dC, dh0, adds to dA (zeros on entry), and
    writes the output before the gate to ``ungated`` (Bt, L, D). Chunk by chunk from the last: the chunk's
    states are recomputed from the state entering it.
    """
    batch, length, channels = u.shape
    zero = k[0]
    n_state = A.shape[0]
    groups = Bm.shape[2]
    per_group = channels // groups
    states = np.empty((chunk + 1, n_state, channels), dtype=u.dtype)  # states[s + 1] = h at position s
    decays = np.empty((chunk, n_state, channels), dtype=u.dtype)
    bits = np.empty(channels, dtype=np.int32)
    scale = bits.view(np.float32)
    bu = np.empty(channels, dtype=u.dtype)
    bu_grad = np.empty(channels, dtype=u.dtype)
    step_grad = np.empty(channels, dtype=u.dtype)
    adj = np.empty((n_state, channels), dtype=u.dtype)
    through = np.empty(channels, dtype=u.dtype)
    out = np.empty(channels, dtype=u.dtype)
    for b in range(batch):
        adj[:, :] = dh[b]
        for c in range(entering.shape[1] - 1, -1, -1):
            start = c * chunk
            steps = min(chunk, length - start)
            states[0] = entering[b, c]
            for s in range(steps):
                t = start + s
                step = dt[b, t]
                for d in range(channels):
                    bu[d] = step[d] * u[b, t, d]
                    out[d] = skip[d] * u[b, t, d]
                for n in range(n_state):
                    exp_row(step, A, n, decays[s, n], bits, scale, k)
                    for g in range(groups):
                        b_n = Bm[b, t, g, n]
                        c_n = Cm[b, t, g, n]
                        for d in range(g * per_group, (g + 1) * per_group):
                            hv = decays[s, n, d] * states[s, n, d] + bu[d] * b_n
                            states[s + 1, n, d] = hv
                            out[d] += c_n * hv
                for d in range(channels):
                    ungated[b, t, d] = out[d]
            for s in range(steps - 1, -1, -1):
                t = start + s
                step = dt[b, t]
                grad_y = dy[b, t]
                for d in range(channels):
                    bu[d] = step[d] * u[b, t, d]
                    bu_grad[d] = zero
                    step_grad[d] = zero
                for n in range(n_state):
                    for g in range(groups):
                        b_n = Bm[b, t, g, n]
                        c_n = Cm[b, t, g, n]
                        grad_b = zero
                        grad_c = zero
                        # Two loops over the channels rather than one: the compiler vectorises loops that touch
                        # fewer arrays better (measured: 17 ms rather than 28 ms at B=32, L=64, D=128, N=16).
                        for d in range(g * per_group, (g + 1) * per_group):
                            gn = adj[n, d] + grad_y[d] * c_n  # dloss/dh_t
                            grad_c += grad_y[d] * states[s + 1, n, d]
                            grad_b += gn * bu[d]
                            bu_grad[d] += gn * b_n
                            carried = gn * decays[s, n, d]
                            adj[n, d] = carried
                            through[d] = carried * states[s, n, d]  # dloss/d(delta A) at (t, n, d)
                        for d in range(g * per_group, (g + 1) * per_group):
                            step_grad[d] += through[d] * A[n, d]
                            dA[n, d] += through[d] * step[d]
                        dB[b, t, g, n] = grad_b
                        dC[b, t, g, n] = grad_c
                for d in range(channels):
                    du[b, t, d] = bu_grad[d] * step[d]
                    ddt[b, t, d] = bu_grad[d] * u[b, t, d] + step_grad[d]
        dh0[b] = adj

