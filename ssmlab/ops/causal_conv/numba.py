"""The causal convolution (and its SiLU) as compiled loops (Numba), for the CPU: an optional accelerator, used when
Numba is installed, for float32 and float64 inputs of at most ``SHIFTED_BELOW`` numbers (the ``torch`` backend
otherwise, and under ``torch.compile``).

The forward kernel sums the K taps over the sequence preceded by the state and applies the SiLU in one pass; the
backward kernel recomputes the pre-activation and writes every gradient (input, initial state, weight, bias) in one
pass more, where the ``torch`` backend's shifted multiply-adds make about twenty tensors of x's size. The SiLU's
exponential is the selective scan kernels' float32 polynomial (``math.exp`` in float64). Measured at Mamba's
training shape in the harness (B=32, L=64, D=128, K=4, float32, one thread, 2-core CPU), forward and backward with
the SiLU: 1.35 ms against 2.36 ms for the ``torch`` backend followed by ``F.silu``. The kernels compile on first use
(about 6 s) and are cached on disk by Numba.
"""

from __future__ import annotations


import torch
from torch.autograd.function import once_differentiable

from ssmlab.ops._dispatch import numba_available
from ssmlab.ops.causal_conv import causal_conv_op
from ssmlab.ops.causal_conv.torch import SHIFTED_BELOW, causal_conv_torch

_module = None


def _kernels():
    global _module
    if _module is None:
        from ssmlab.ops.causal_conv import _numba_kernels
        _module = _numba_kernels
    return _module


def _constants(dtype: torch.dtype):
    from ssmlab.ops._numba_math import constants

    return constants(torch.empty(0, dtype=dtype).numpy().dtype)


class _Conv(torch.autograd.Function):
    """x (B, L, D), weight (D, K), bias (D,), state (B, K - 1, D), all in x's dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, weight, bias, state, silu):
        # Contiguous: the kernels run 2.5x slower on a strided view such as Mamba's half of its input projection.
        x, w = x.detach().contiguous(), weight.detach().t().contiguous()  # (B, L, D), (K, D)
        y = torch.empty(x.shape, dtype=x.dtype)
        _kernels().forward(x.numpy(), state.detach().numpy(), w.numpy(), bias.detach().numpy(), silu,
                           y.numpy(), _constants(x.dtype))
        ctx.save_for_backward(x, w, bias.detach(), state.detach())
        ctx.silu = silu
        ctx.set_materialize_grads(False)
        length, keep = x.shape[1], state.shape[1]
        # (B, K - 1, D): the last K - 1 inputs of state ++ x, without concatenating the whole sequence.
        final = x[:, length - keep:].clone() if length >= keep else torch.cat([state[:, length:], x], dim=1)
        return y, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_final):
        x, w, bias, state = ctx.saved_tensors
        batch, length, channels = x.shape
        width = w.shape[0]
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y.to(x.dtype).contiguous()
        grad_final = x.new_zeros(batch, width - 1, channels) if grad_final is None else \
            grad_final.to(x.dtype).contiguous()
        dxs = x.new_empty(batch, width - 1 + length, channels)
        dw, dbias = torch.zeros_like(w), torch.zeros_like(bias)
        _kernels().backward(x.numpy(), state.numpy(), w.numpy(), bias.numpy(), ctx.silu, grad_y.numpy(),
                            grad_final.numpy(), dxs.numpy(), dw.numpy(), dbias.numpy(), _constants(x.dtype))
        return dxs[:, width - 1:], dw.t(), dbias, dxs[:, :width - 1], None


@causal_conv_op.register("numba", priority=20, available=numba_available)
def causal_conv_numba(x, weight, bias=None, *, activation=None, initial_state=None):
    """The compiled kernels (see the module docstring), or the ``torch`` backend where they do not apply."""
    if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64) or x.numel() > SHIFTED_BELOW:
        return causal_conv_torch(x, weight, bias, activation=activation, initial_state=initial_state)
    batch, length, channels = x.shape
    width = weight.shape[1]
    state = x.new_zeros(batch, width - 1, channels) if initial_state is None else \
        initial_state.to(x.dtype).transpose(1, 2).contiguous()
    b = x.new_zeros(channels) if bias is None else bias.to(x.dtype)
    y, final = _Conv.apply(x, weight.to(x.dtype), b, state, activation == "silu")
    return y, final.transpose(1, 2)
