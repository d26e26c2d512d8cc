"""The ``numba`` backend of ``selective_scan_step``: one position of the scan in one compiled call.

Generation calls the step once per layer and token; its arithmetic is small (B D N
products) and PyTorch spends most of its time there launching a dozen small kernels.
PyTorch computes the step size (its bias and softplus, as for the training kernels); one
compiled call does the decays, the state update, the read-out, the skip and the gate,
writing the state to a new (B, D, N) tensor (the state passed in is left as it was).
In float32 the exponentials are the polynomial of
:func:`ssmlab.ops.selective_scan._numba_kernels.exp_row` (bit pattern of 2^i, degree-7
polynomial of the remainder) over flat arrays, so that they vectorise; in float64,
``math.exp``. At the Mamba-130M shape (D=1536, N=16, B=1) the call takes about 25 µs
against about 100 µs for the reference's dozen PyTorch kernels (one thread).
Gradients, where asked for, come from the reference arithmetic recomputed in the
backward pass. Under ``torch.compile`` and ``torch.export`` the reference runs.
"""

from __future__ import annotations

import math

import torch

from ssmlab.ops.selective_scan.numba import numba_available

_kernel = None


def _compiled():
    global _kernel
    if _kernel is None:
        import numba
        import numpy as np

        @numba.njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
        def exp_into(x, out, bits, scale, k):
            """out = exp(x) over flat arrays: ``exp_row``'s polynomial in float32 (``k[14] == 1``), else math.exp.
            Without reassociation, which would undo the two-part reduction of the argument."""
            if k[14] == k[0]:
                for j in range(x.shape[0]):
                    out[j] = math.exp(x[j])
                return
            one, lo, hi, half, log2e, ln2_hi, ln2_lo = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            c2, c3, c4, c5, c6, c7 = k[8], k[9], k[10], k[11], k[12], k[13]
            for j in range(x.shape[0]):
                a = min(max(x[j], lo), hi)
                i = math.floor(a * log2e + half)
                r = (a - i * ln2_hi) - i * ln2_lo
                out[j] = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
                bits[j] = (np.int32(i) + np.int32(127)) << 23
            for j in range(x.shape[0]):
                out[j] *= scale[j]

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
                exp_into(arg, decay, bits, bits.view(np.float32), k)
                if gated:
                    for d in range(channels):
                        neg_z[d] = -z[b, d]
                    exp_into(neg_z, exp_neg_z, bits, bits.view(np.float32), k)
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


def _reference_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus):
    from ssmlab.ops.selective_scan.reference import step
    return step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)


class _Step(torch.autograd.Function):
    """The kernel's forward; the backward differentiates the reference step recomputed from the saved inputs."""

    @staticmethod
    def forward(ctx, softplus, u, delta, A, B, C, state, D, z, delta_bias):
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, state, D, z, delta_bias)
        return _run(u, delta, A, B, C, state, D, z, delta_bias, softplus)

    @staticmethod
    def backward(ctx, grad_y, grad_state):
        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]
        with torch.enable_grad():
            outputs = _reference_step(*inputs, ctx.softplus)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(outputs, wanted, (grad_y, grad_state), allow_unused=True))
        return (None, *(next(grads) if t is not None and t.requires_grad else None for t in inputs))


def _run(u, delta, A, B, C, state, D, z, delta_bias, softplus):
    from ssmlab.ops.selective_scan._numba_kernels import constants
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
    tensors = (u, delta, A, B, C, state, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _Step.apply(delta_softplus, *tensors)
    return _run(*tensors, delta_softplus)


__all__ = ["numba_available", "selective_scan_step_numba"]
