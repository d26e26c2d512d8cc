"""Long convolution of a sequence with a per-channel kernel as long as the sequence.

``fft_conv(u, k)`` computes, for each channel d,

* causal: ``y[t] = sum_{s <= t} k[d, t - s] u[s]``;
* bidirectional: ``k`` is (D, 2L); its first L entries ``k_f`` act causally as above and
  its last L entries ``k_b`` act on the future: ``y[t] += sum_{s > t} k_b[d, s - t - 1] u[s]``
  (so ``k_b[0]`` weighs the next position);

plus ``D[d] u[t]`` when the skip term ``D`` (D,) is given. A convolution has no
recurrent state, so this op takes no ``initial_state``: an SSM layer adds the
response of its initial state itself.

Backends: ``reference`` (direct O(L^2) sum) and ``torch`` (FFT, O(L log L), default).
"""

from __future__ import annotations

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

fft_conv_op = Op("fft_conv")


def fft_conv(u, k, *, D=None, bidirectional: bool = False, backend: str | None = None):
    """Convolve ``u`` (B, L, D) with ``k`` (D, L), or (D, 2L) when ``bidirectional``; returns (B, L, D)."""
    check_tensor("u", u, ("B", "L", "D"), allow_complex=False)
    batch, length, channels = u.shape
    width = 2 * length if bidirectional else length
    check_tensor("k", k, (channels, width), allow_complex=False)
    if D is not None:
        check_tensor("D", D, (channels,), allow_complex=False)
    return fft_conv_op.resolve(backend, u.device)(u, k, D=D, bidirectional=bidirectional)


from ssmlab.ops.fftconv import reference as _reference  # noqa: E402,F401  (registers the backend)
from ssmlab.ops.fftconv import torch as _torch_backend  # noqa: E402,F401
