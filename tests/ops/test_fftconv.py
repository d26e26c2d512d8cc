import pytest
import torch

from ssmlab.ops import fft_conv
from ssmlab.ops.fftconv import fft_conv_op
from tests.utils import LENGTHS, assert_close

FAST = [b for b in fft_conv_op.backends if b != "reference"]


def _inputs(length, bidirectional, dtype=torch.float64, channels=3, batch=2):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(batch, length, channels, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(channels, 2 * length if bidirectional else length, generator=g, dtype=torch.float64).to(dtype)
    d = torch.randn(channels, generator=g, dtype=torch.float64).to(dtype)
    return u, k, d


def test_reference_is_the_written_sum():
    u, k, d = _inputs(6, True)
    y = fft_conv(u, k, D=d, bidirectional=True, backend="reference")
    L = 6
    for t in range(L):
        want = d * u[:, t]
        for s in range(L):
            want = want + (k[:, t - s] if s <= t else k[:, L + s - t - 1]) * u[:, s]
        assert_close(y[:, t], want, atol=1e-12, name=f"position {t}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_reference_float64(backend, bidirectional, length):
    u, k, d = _inputs(length, bidirectional)
    for skip in (None, d):
        want = fft_conv(u, k, D=skip, bidirectional=bidirectional, backend="reference")
        got = fft_conv(u, k, D=skip, bidirectional=bidirectional, backend=backend)
        assert_close(got, want, atol=1e-10, rtol=1e-10, name=f"{backend} vs reference")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_long(backend, bidirectional):
    # L = 4096 in float32: FFT round-off grows like log L; 1e-3 relative to the output scale.
    u, k, d = _inputs(4096, bidirectional, channels=2, batch=1)
    want = fft_conv(u, k, D=d, bidirectional=bidirectional, backend="reference")
    got = fft_conv(u.float(), k.float(), D=d.float(), bidirectional=bidirectional, backend=backend)
    assert_close(got.double(), want, atol=1e-3 * want.abs().max().item(), name="float32 L=4096")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradients_match_reference(backend, bidirectional):
    u, k, d = _inputs(17, bidirectional)
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in (u, k, d)]
        fft_conv(leaves[0], leaves[1], D=leaves[2], bidirectional=bidirectional, backend=name).sin().sum().backward()
        grads[name] = [t.grad for t in leaves]
    for label, a, b in zip("ukD", grads[backend], grads["reference"]):
        assert_close(a, b, atol=1e-10, rtol=1e-10, name=f"grad {label}")
    u, k, d = (t.requires_grad_(True) for t in _inputs(5, bidirectional, channels=2, batch=1))
    assert torch.autograd.gradcheck(lambda a, b, c: fft_conv(a, b, D=c, bidirectional=bidirectional, backend=backend),
                                    (u, k, d))


def test_bad_inputs():
    u, k, d = _inputs(8, False)
    with pytest.raises(ValueError, match=r"\(B, L, D\)"):
        fft_conv(u[0], k)
    with pytest.raises(ValueError, match=r"k must have shape \(3, 8\)"):
        fft_conv(u, k[:, :5])
    with pytest.raises(ValueError, match=r"\(3, 16\)"):
        fft_conv(u, k, bidirectional=True)
    with pytest.raises(ValueError, match="real"):
        fft_conv(u.to(torch.complex128), k)
    with pytest.raises(ValueError, match=r"D must have shape \(3,\)"):
        fft_conv(u, k, D=d[:2])
    with pytest.raises(RuntimeError, match="no backend named 'cuda'"):
        fft_conv(u, k, backend="cuda")
