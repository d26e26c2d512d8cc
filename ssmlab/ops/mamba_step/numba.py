"""The ``numba`` backend of ``mamba_step``: a Mamba mixer's step for one position in one compiled pass.

The pass streams each weight matrix once, row by row (every product is a dot product over a contiguous row,
vectorised), and keeps every intermediate vector in small scratch arrays: the input projection, the
convolution with its SiLU and shifted state, the x projection, the step size (``dt_weight`` times the first
R entries, its bias and softplus), the decays, the state update, the read-out with the skip and the gate, and
the output projection. The exponentials, softplus and SiLU are those of :mod:`ssmlab.ops._numba_math` (a
vectorised polynomial in float32). The three projections, which stream almost all the bytes, split their rows
across ``torch.get_num_threads()`` threads (a serial build runs for one): on the 2-core machine it was written
on one thread streams about 30 GB/s and two about 45 to 50. The states come back as new tensors (those passed in are
left as they were). Gradients, where asked for, come from the reference recomputed in the backward pass;
tensors other than float32 and float64 (all of one dtype with x), and code under ``torch.compile``, run the
``torch`` backend.
"""

from __future__ import annotations


import torch

from ssmlab.ops._dispatch import numba_available
from ssmlab.ops._recompute import run_with_reference_gradient
from ssmlab.ops.mamba_step import mamba_step_op, mamba_step_reference, mamba_step_torch

_kernel = None


def _compiled(parallel: bool):
    """The kernel; its three projections split their rows across threads when ``parallel``."""
    global _kernel
    if _kernel is None:
        import numba
        import numpy as np

        from ssmlab.ops._numba_math import exp_flat, serial_and_parallel, softplus_flat

        def kernel(x, conv_state, ssm_state, in_w, in_b, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w, out_b,
                   in_s, x_s, out_s, flags, k, out, new_conv, new_ssm):
            """flags: has in_bias, conv_bias, D, out_bias, in_scale, x_scale, out_scale. Shapes as
            ``mamba_step``'s (int8 projections times their scales); out, new_conv, new_ssm are written."""
            batch, d_model = x.shape
            inner, width = conv_w.shape
            n_state, rank = A.shape[1], dt_w.shape[1]
            dtype = x.dtype
            xz, pre, u, neg, e, step, slope, work = (np.empty(2 * inner, dtype), np.empty(inner, dtype),
                                                     np.empty(inner, dtype), np.empty(inner, dtype),
                                                     np.empty(inner, dtype), np.empty(inner, dtype),
                                                     np.empty(inner, dtype), np.empty(inner, dtype))
            proj, y = np.empty(rank + 2 * n_state, dtype), np.empty(inner, dtype)
            arg, decay = np.empty(inner * n_state, dtype), np.empty(inner * n_state, dtype)
            bits = np.empty(inner * n_state, np.int32)
            flat_A = A.reshape(inner * n_state)
            zero, one = k[0], k[1]
            for b in range(batch):
                for r in numba.prange(2 * inner):
                    total = zero
                    for j in range(d_model):
                        total += in_w[r, j] * x[b, j]  # int8 times float32 is float32 in Numba
                    if flags[4]:
                        total *= in_s[r]
                    xz[r] = total + in_b[r] if flags[0] else total
                for c in range(inner):
                    total = conv_b[c] if flags[1] else zero
                    for j in range(width - 1):
                        total += conv_w[c, j] * conv_state[b, c, j]
                    pre[c] = total + conv_w[c, width - 1] * xz[c]
                    for j in range(width - 2):
                        new_conv[b, c, j] = conv_state[b, c, j + 1]
                    if width > 1:
                        new_conv[b, c, width - 2] = xz[c]
                for c in range(inner):
                    neg[c] = -pre[c]
                exp_flat(neg, e, bits[:inner], k)
                for c in range(inner):
                    u[c] = pre[c] / (one + e[c])
                for r in numba.prange(rank + 2 * n_state):
                    total = zero
                    for c in range(inner):
                        total += x_w[r, c] * u[c]
                    proj[r] = total * x_s[r] if flags[5] else total
                for c in range(inner):
                    total = dt_b[c]
                    for r in range(rank):
                        total += dt_w[c, r] * proj[r]
                    pre[c] = total
                softplus_flat(pre, step, slope, work, bits[:inner], k)
                for c in range(inner):
                    for n in range(n_state):
                        arg[c * n_state + n] = step[c] * flat_A[c * n_state + n]
                exp_flat(arg, decay, bits, k)
                for c in range(inner):
                    neg[c] = -xz[inner + c]
                exp_flat(neg, e, bits[:inner], k)
                for c in range(inner):
                    bu = step[c] * u[c]
                    total = zero
                    for n in range(n_state):
                        h = decay[c * n_state + n] * ssm_state[b, c, n] + bu * proj[rank + n]
                        new_ssm[b, c, n] = h
                        total += proj[rank + n_state + n] * h
                    if flags[2]:
                        total += D[c] * u[c]
                    y[c] = total * xz[inner + c] / (one + e[c])
                for m in numba.prange(out_w.shape[0]):
                    total = zero
                    for c in range(inner):
                        total += out_w[m, c] * y[c]
                    if flags[6]:
                        total *= out_s[m]
                    out[b, m] = total + out_b[m] if flags[3] else total

        _kernel = serial_and_parallel(kernel, "mamba_step")
    return _kernel[parallel]


def _run(x, conv_state, ssm_state, *weights):
    import numba

    from ssmlab.ops._numba_math import constants, threads

    dtype = x.dtype

    def np_(t):
        if (t.dtype == dtype or t.dtype == torch.int8) and t.is_contiguous():
            return t.detach().numpy()
        return t.detach().to(torch.int8 if t.dtype == torch.int8 else dtype).contiguous().numpy()

    dummy = x.new_zeros(1)
    arrays = [np_(dummy if w is None else w) for w in weights]
    flags = tuple(weights[i] is not None for i in (1, 3, 8, 10, 11, 12, 13))
    out = x.new_empty(x.shape[0], weights[9].shape[0])  # (B, M): out_weight has M rows
    new_conv, new_ssm = x.new_empty(conv_state.shape), x.new_empty(ssm_state.shape)
    parallel = threads()
    if parallel > 1:
        numba.set_num_threads(parallel)
    _compiled(parallel > 1)(np_(x), np_(conv_state), np_(ssm_state), *arrays, flags,
                constants(out.numpy().dtype), out.numpy(), new_conv.numpy(), new_ssm.numpy())
    return out, new_conv, new_ssm


@mamba_step_op.register("numba", priority=20, available=numba_available)
def mamba_step_numba(x, conv_state, ssm_state, *weights):
    tensors = (x, conv_state, ssm_state, *weights)
    if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64) or any(
            t is not None and t.dtype not in (torch.float32, torch.float64, torch.int8) for t in tensors):
        return mamba_step_torch(*tensors)
    return run_with_reference_gradient(_run, mamba_step_reference, *tensors)
