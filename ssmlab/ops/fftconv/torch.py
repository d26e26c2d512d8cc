"""FFT convolution: O(L log L), zero-padded to avoid circular wrap-around."""

from __future__ import annotations

import torch

from ssmlab.ops.fftconv import fft_conv_op


@fft_conv_op.register("torch", priority=10)
def fft_conv_fft(u, k, *, D=None, bidirectional=False):
    length = u.shape[1]
    n = 2 * length
    if bidirectional:
        # Place the anticausal taps at negative lags, i.e. at the end of a circular buffer of size 2L.
        k_f, k_b = k[:, :length], k[:, length:]
        k = torch.cat([k_f, torch.zeros_like(k_f[:, :1]), k_b[:, : length - 1].flip(-1)], dim=-1)  # (D, 2L)
    compute = torch.promote_types(u.dtype, torch.float32)
    u_f = torch.fft.rfft(u.to(compute), n=n, dim=1)  # (B, n/2+1, D)
    k_f = torch.fft.rfft(k.to(compute), n=n, dim=-1).T  # (n/2+1, D)
    y = torch.fft.irfft(u_f * k_f, n=n, dim=1)[:, :length].to(u.dtype)
    return y if D is None else y + u * D
