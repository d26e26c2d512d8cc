"""Direct O(L^2) convolution: the specification of ``fft_conv``."""

from __future__ import annotations

import torch

from ssmlab.ops.fftconv import fft_conv_op


def _toeplitz(k: torch.Tensor, length: int, bidirectional: bool) -> torch.Tensor:
    """Matrix T (D, L, L) with ``y[:, t] = sum_s T[:, t, s] u[:, s]``."""
    t = torch.arange(length, device=k.device)
    lag = t[:, None] - t[None, :]  # t - s
    causal = torch.where(lag >= 0, k[:, lag.clamp(min=0)], torch.zeros((), dtype=k.dtype, device=k.device))
    if not bidirectional:
        return causal
    back = k[:, length:]
    return causal + torch.where(lag < 0, back[:, (-lag - 1).clamp(min=0)], torch.zeros((), dtype=k.dtype,
                                                                                        device=k.device))


@fft_conv_op.register("reference", priority=0)
def fft_conv_reference(u, k, *, D=None, bidirectional=False):
    y = torch.einsum("dts,bsd->btd", _toeplitz(k.to(u.dtype), u.shape[1], bidirectional), u)
    return y if D is None else y + u * D
