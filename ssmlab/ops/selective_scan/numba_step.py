"""The ``numba`` backend of ``selective_scan_step``: one position of the scan in one compiled call.

Generation calls the step once per layer and token; its arithmetic is small (B D N
products) and PyTorch spends most of its time there launching a dozen small kernels.
PyTorch computes the step size (its bias and softplus, as for the training kernels); one
compiled call does the decays, the state update, the read-out, the skip and the gate,
writing the state to a new (B, D, N) tensor (the state passed in is left as it was).
In float32 the exponentials are the polynomial of :func:`ssmlab.ops._numba_math.exp_into` (through ``exp_flat``),
which vectorises; in float64, ``math.exp``. At the Mamba-130M shape (D=1536, N=16, B=1)
the kernel takes about 25 µs against about 100 µs for the reference's dozen PyTorch
kernels (one thread).
Gradients, where asked for, come from the reference arithmetic recomputed in the
backward pass. Under ``torch.compile`` and ``torch.export`` the reference runs.
"""

from __future__ import annotations

from functools import partial

import torch

from ssmlab.ops._recompute import run_with_reference_gradient
from ssmlab.ops.selective_scan.numba import numba_available
from ssmlab.ops.selective_scan.reference import step as _reference_step

_kernel = None


def _compiled():
    global _kernel
    if _kernel is None:
        import numba
        import numpy as np

        from ssmlab.ops._numba_math import exp_flat

        @numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
        def kernel(u, step, A, Bm, Cm, state, skip, z, has_skip, gated, k, y, new):
            """u, step, z, y (Bt, D); A (D, N); Bm, Cm (Bt, G, N); state, new (Bt, D, N); skip (D,); k: the
            constants of ``_numba_kernels.constants``. ``step`` is the step size after its bias and softplus."""
            batch, channels = u.shape
            n_state, groups = A.shape[1], Bm.shape[1]
            per_group = channels // groups
            size = channels * n_state
            flat_A = A.reshape(size)
            arg, decay = np.empty(size, dtype=u.dtype), np.empty(size, dtype=u.dtype)
            bits = np.empty(size, dtype=np.int32)
            neg_z, exp_neg_z = np.empty(channels, dtype=u.dtype), np.empty(channels, dtype=u.dtype)
            for b in range(batch):
                for d in range(channels):
                    for n in range(n_state):
                        arg[d * n_state + n] = step[b, d] * flat_A[d * n_state + n]
                exp_flat(arg, decay, bits, k)
                if gated:
                    for d in range(channels):
                        neg_z[d] = -z[b, d]
                    exp_flat(neg_z, exp_neg_z, bits[:channels], k)
                for d in range(channels):
                    g = d // per_group
                    bu = step[b, d] * u[b, d]
                    out = k[0]
                    for n in range(n_state):
                        h = decay[d * n_state + n] * state[b, d, n] + bu * Bm[b, g, n]
                        new[b, d, n] = h
                        out += Cm[b, g, n] * h
                    if has_skip:
                        out += skip[d] * u[b, d]
                    if gated:
                        out *= z[b, d] / (k[1] + exp_neg_z[d])
                    y[b, d] = out

        _kernel = kernel
    return _kernel


def _run(u, delta, A, B, C, state, D, z, delta_bias, softplus):
    from ssmlab.ops._numba_math import constants
    from ssmlab.ops.selective_scan.reference import compute_dtype, prepare_delta

    dtype = compute_dtype(u.dtype)
    batch, channels = u.shape
    np_ = lambda t: (t if t.dtype == dtype else t.to(dtype)).detach().contiguous().numpy()  # noqa: E731
    grouped = lambda m: np_(m[:, None] if m.dim() == 2 else m)  # noqa: E731  (Bt, G, N)
    step = prepare_delta(delta.detach(), None if delta_bias is None else delta_bias.detach(), softplus)
    y = torch.empty(batch, channels, dtype=dtype)
    new = torch.empty(batch, channels, A.shape[1], dtype=dtype)
    _compiled()(np_(u), np_(step), np_(A), grouped(B), grouped(C), np_(state), np_(u[0] if D is None else D),
                np_(u if z is None else z), D is not None, z is not None, constants(y.numpy().dtype), y.numpy(),
                new.numpy())
    return y.to(u.dtype), new


def selective_scan_step_numba(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus):
    if torch.compiler.is_compiling():
        return _reference_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)
    return run_with_reference_gradient(partial(_run, softplus=delta_softplus),
                                       partial(_reference_step, delta_softplus=delta_softplus),
                                       u, delta, A, B, C, state, D, z, delta_bias)


__all__ = ["numba_available", "selective_scan_step_numba"]
