"""Numba kernels of the selective scan; see :mod:`ssmlab.ops.selective_scan.numba`. Imported only when used."""

from __future__ import annotations

import math

import numba
import numpy as np

from ssmlab.ops._numba_math import constants, silu_into, softplus_into  # noqa: F401  (constants: the kernels' k)

_jit = numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
_jit_exact = numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")


# Compiled without reassociation, which would undo the two-part reduction of the argument.
@_jit_exact
def decays_into(step, A, out, bits, scale, k):
    """out[n, g, j] = exp(step[g, j] A[n, g, j]), every decay of one position; step (G, P), A, out, bits, scale
    (N, G, P).

    With the polynomial (``k[-1] == 1``, float32): for ``a = step A`` clamped to [-127 ln 2, 128 ln 2],
    2^i e^r with i = round(a log2 e) and r = a - i ln 2 (|r| <= ln(2) / 2), e^r by its Taylor polynomial
    of degree 7 and 2^i from its float32 bit pattern (written to ``bits``, read as ``scale``), which is 0
    for i = -127 (arguments below about -87.7 give 0) and infinity for i = 128 (above about 88.4).
    Otherwise ``math.exp``.
    """
    n_state, groups, width = out.shape
    size = groups * width
    x = step.reshape(size)
    a_flat, out_flat, bits_flat, scale_flat = A.reshape(n_state, size), out.reshape(n_state, size), \
        bits.reshape(n_state, size), scale.reshape(n_state, size)
    if k[14] == k[0]:
        for n in range(n_state):
            for j in range(size):
                out_flat[n, j] = math.exp(x[j] * a_flat[n, j])
        return
    one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
    for n in range(n_state):
        row, exps, powers = a_flat[n], out_flat[n], bits_flat[n]
        for j in range(size):
            a = min(max(x[j] * row[j], lo), hi)
            # np.floor keeps float32; math.floor returns an integer, which would make the rest float64 arithmetic.
            i = np.floor(a * log2e + half)
            r = (a - i * ln2_hi) - i * ln2_lo
            exps[j] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
            powers[j] = (np.int32(i) + np.int32(127)) << 23
    for n in range(n_state):
        exps, scales = out_flat[n], scale_flat[n]
        for j in range(size):
            exps[j] *= scales[j]


# Channels are split as (G, P), P = D / G channels per group, and every inner loop runs over j in range(P):
# an index that provably starts at 0 lets the compiler drop Numba's negative-index wraparound and vectorise.


@_jit_exact
def chunk_inputs(delta, bias, softplus, z, gated, steps, slopes, gates, sigs, pre, work, bits, scale, k):
    """For the S positions of a chunk: steps = softplus(delta + bias) (no softplus unless ``softplus``) and
    slopes, its derivative; when ``gated``, gates = silu(z) and sigs = sigmoid(z). delta, z (S, G, P); bias (G, P);
    steps, slopes, gates, sigs (chunk, G, P), S <= chunk; pre, work, bits, scale (chunk G P,) scratch. Each is one
    loop over the whole chunk, so that the compiler vectorises it."""
    positions, groups, width = delta.shape
    span = groups * width
    size = positions * span
    flat = lambda t: t.reshape(t.shape[0] * span)[:size]  # noqa: E731
    step, slope, gate, sig = flat(steps), flat(slopes), flat(gates), flat(sigs)
    for s in range(positions):
        for g in range(groups):
            for j in range(width):
                pre[s * span + g * width + j] = delta[s, g, j] + bias[g, j]
    if softplus:
        softplus_into(pre[:size], step, slope, work[:size], bits[:size], scale[:size], k)
    else:
        for i in range(size):
            step[i] = pre[i]
            slope[i] = k[1]
    if gated:
        for s in range(positions):
            for g in range(groups):
                for j in range(width):
                    pre[s * span + g * width + j] = z[s, g, j]
        silu_into(pre[:size], gate, sig, bits[:size], scale[:size], k)


@_jit_exact
def forward(u, delta, bias, softplus, A, Bm, Cm, skip, z, gated, h0, y, h_out, entering, chunk, k):
    """``y_t[g, j] = (sum_n C_t[g, n] h_t[n, g, j] + skip[g, j] u_t[g, j]) * silu(z_t[g, j])`` (no gate unless
    ``gated``), with the step ``softplus(delta_t + bias)`` (no softplus unless ``softplus``).

    u, delta, y, z (Bt, L, G, P); bias, skip (G, P); A (N, G, P); Bm, Cm (Bt, L, G, N); h0, h_out (Bt, N, G, P);
    entering (Bt, ceil(L / chunk), N, G, P) receives the state before every ``chunk`` positions (or has 0
    chunks).
    """
    batch, length, groups, width = u.shape
    zero = k[0]
    n_state = A.shape[0]
    keep = entering.shape[1] > 0
    bits = np.empty(chunk * groups * width, dtype=np.int32)
    scale = bits.view(np.float32)  # 2^i, written through ``bits``
    work = np.empty(chunk * groups * width, dtype=u.dtype)
    pre = np.empty(chunk * groups * width, dtype=u.dtype)
    steps = np.empty((chunk, groups, width), dtype=u.dtype)
    slopes = np.empty((chunk, groups, width), dtype=u.dtype)
    gates = np.empty((chunk, groups, width), dtype=u.dtype)
    sigs = np.empty((chunk, groups, width), dtype=u.dtype)
    bu = np.empty((groups, width), dtype=u.dtype)
    out = np.empty((groups, width), dtype=u.dtype)
    h = np.empty((n_state, groups, width), dtype=u.dtype)
    decay_all = np.empty((n_state, groups, width), dtype=u.dtype)
    bits_all = np.empty((n_state, groups, width), dtype=np.int32)
    scale_all = bits_all.view(np.float32)
    for b in range(batch):
        h[:] = h0[b]
        for t in range(length):
            s = t % chunk
            if s == 0:
                if keep:
                    entering[b, t // chunk] = h
                end = min(t + chunk, length)
                chunk_inputs(delta[b, t:end], bias, softplus, z[b, t:end], gated, steps, slopes, gates, sigs, pre,
                             work, bits, scale, k)
            step = steps[s]
            for g in range(groups):
                for j in range(width):
                    bu[g, j] = step[g, j] * u[b, t, g, j]
                    out[g, j] = zero
            decays_into(step, A, decay_all, bits_all, scale_all, k)
            for n in range(n_state):
                for g in range(groups):
                    b_n = Bm[b, t, g, n]
                    c_n = Cm[b, t, g, n]
                    for j in range(width):
                        hv = decay_all[n, g, j] * h[n, g, j] + bu[g, j] * b_n
                        h[n, g, j] = hv
                        out[g, j] += c_n * hv
            for g in range(groups):
                if gated:
                    for j in range(width):
                        y[b, t, g, j] = (out[g, j] + skip[g, j] * u[b, t, g, j]) * gates[s, g, j]
                else:
                    for j in range(width):
                        y[b, t, g, j] = out[g, j] + skip[g, j] * u[b, t, g, j]
        h_out[b] = h


@_jit
def backward(u, delta, bias, softplus, A, Bm, Cm, skip, z, gated, entering, chunk, dy, dh, du, ddelta, dA, dB, dC,
             dh0, dz, dskip, dbias, k):
    """Gradients given dy (Bt, L, G, P), the gradient of the output, and dh (Bt, N, G, P).

    Writes du, ddelta (of ``delta``, before the bias and softplus), dB, dC, dh0 and dz (when ``gated``), and adds
    to dA, dskip and dbias (zeros on entry). Chunk by chunk from the last: the chunk's states, step sizes and
    outputs before the gate are recomputed from the state entering it.
    """
    batch, length, groups, width = u.shape
    zero, one = k[0], k[1]
    n_state = A.shape[0]
    states = np.empty((chunk + 1, n_state, groups, width), dtype=u.dtype)  # states[s + 1]: h at position s
    decays = np.empty((chunk, n_state, groups, width), dtype=u.dtype)
    bits_all = np.empty((n_state, groups, width), dtype=np.int32)
    scale_all = bits_all.view(np.float32)
    steps = np.empty((chunk, groups, width), dtype=u.dtype)
    slopes = np.empty((chunk, groups, width), dtype=u.dtype)
    gates = np.empty((chunk, groups, width), dtype=u.dtype)
    sigs = np.empty((chunk, groups, width), dtype=u.dtype)
    ungated = np.empty((chunk, groups, width), dtype=u.dtype)
    bits = np.empty(chunk * groups * width, dtype=np.int32)
    scale = bits.view(np.float32)
    work = np.empty(chunk * groups * width, dtype=u.dtype)
    pre = np.empty(chunk * groups * width, dtype=u.dtype)
    bu = np.empty((groups, width), dtype=u.dtype)
    grad_out = np.empty((groups, width), dtype=u.dtype)
    bu_grad = np.empty((groups, width), dtype=u.dtype)
    step_grad = np.empty((groups, width), dtype=u.dtype)
    adj = np.empty((n_state, groups, width), dtype=u.dtype)
    for b in range(batch):
        adj[:] = dh[b]
        for c in range(entering.shape[1] - 1, -1, -1):
            start = c * chunk
            steps_here = min(chunk, length - start)
            states[0] = entering[b, c]
            chunk_inputs(delta[b, start:start + steps_here], bias, softplus, z[b, start:start + steps_here], gated,
                         steps, slopes, gates, sigs, pre, work, bits, scale, k)
            for s in range(steps_here):
                t = start + s
                step = steps[s]
                out = ungated[s]
                for g in range(groups):
                    for j in range(width):
                        bu[g, j] = step[g, j] * u[b, t, g, j]
                        out[g, j] = skip[g, j] * u[b, t, g, j]
                decays_into(step, A, decays[s], bits_all, scale_all, k)
                for n in range(n_state):
                    for g in range(groups):
                        b_n = Bm[b, t, g, n]
                        c_n = Cm[b, t, g, n]
                        for j in range(width):
                            hv = decays[s, n, g, j] * states[s, n, g, j] + bu[g, j] * b_n
                            states[s + 1, n, g, j] = hv
                            out[g, j] += c_n * hv
            for s in range(steps_here - 1, -1, -1):
                t = start + s
                step = steps[s]
                for g in range(groups):
                    if gated:
                        for j in range(width):
                            grad = dy[b, t, g, j]
                            grad_out[g, j] = grad * gates[s, g, j]
                            sv = sigs[s, g, j]
                            dz[b, t, g, j] = grad * ungated[s, g, j] * sv * (one + z[b, t, g, j] * (one - sv))
                    else:
                        for j in range(width):
                            grad_out[g, j] = dy[b, t, g, j]
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
                        for j in range(width):
                            gn = adj[n, g, j] + grad_out[g, j] * c_n  # dloss/dh_t
                            grad_c += grad_out[g, j] * states[s + 1, n, g, j]
                            grad_b += gn * bu[g, j]
                            bu_grad[g, j] += gn * b_n
                            carried = gn * decays[s, n, g, j]
                            adj[n, g, j] = carried
                            through = carried * states[s, n, g, j]  # dloss/d(delta A) at (t, n, g, j)
                            step_grad[g, j] += through * A[n, g, j]
                            dA[n, g, j] += through * step[g, j]
                        dB[b, t, g, n] = grad_b
                        dC[b, t, g, n] = grad_c
                for g in range(groups):
                    for j in range(width):
                        grad = grad_out[g, j]
                        uv = u[b, t, g, j]
                        du[b, t, g, j] = bu_grad[g, j] * step[g, j] + grad * skip[g, j]
                        dskip[g, j] += grad * uv
                        grad_pre = (bu_grad[g, j] * uv + step_grad[g, j]) * slopes[s, g, j]
                        ddelta[b, t, g, j] = grad_pre
                        dbias[g, j] += grad_pre
        dh0[b] = adj
