import pytest
import torch

from ssmlab.ops import linear_scan
from ssmlab.ops.scan import linear_scan_op
from ssmlab.ops.scan.torch import linear_scan_chunked
from tests.utils import LENGTHS, assert_close

FAST = [b for b in linear_scan_op.backends if b != "reference"]


def _inputs(length, dtype=torch.float64, shape=(3,), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64
    a = torch.rand(batch, length, *shape, generator=g, dtype=real) * 0.98
    b = torch.randn(batch, length, *shape, generator=g, dtype=real)
    h0 = torch.randn(batch, *shape, generator=g, dtype=real)
    if dtype.is_complex:
        phase = torch.rand(batch, length, *shape, generator=g, dtype=real) * 6.28
        a = torch.polar(a, phase)
        b = torch.complex(b, torch.randn(batch, length, *shape, generator=g, dtype=real))
        h0 = h0.to(dtype)
    return a.to(dtype), b.to(dtype), h0.to(dtype)


def test_reference_is_the_recurrence():
    a, b, h0 = _inputs(5)
    h = linear_scan(a, b, initial_state=h0, backend="reference")
    prev = h0
    for t in range(5):
        prev = a[:, t] * prev + b[:, t]
        assert torch.equal(h[:, t], prev)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_reference(backend, dtype, length):
    a, b, h0 = _inputs(length, dtype)
    for init in (None, h0):
        want, want_last = linear_scan(a, b, initial_state=init, return_final_state=True, backend="reference")
        got, got_last = linear_scan(a, b, initial_state=init, return_final_state=True, backend=backend)
        assert_close(got, want, atol=1e-12, rtol=1e-12, name=f"{backend} h")
        assert_close(got_last, want_last, atol=1e-12, rtol=1e-12, name=f"{backend} final state")


@pytest.mark.parametrize("backend", FAST)
def test_zero_decay_and_multi_dim_state(backend):
    a, b, h0 = _inputs(70, shape=(2, 3))
    a[:, 10] = 0.0  # the state is forgotten exactly here
    h = linear_scan(a, b, initial_state=h0, backend=backend)
    assert_close(h, linear_scan(a, b, initial_state=h0, backend="reference"), atol=1e-12, name="h")
    assert_close(h[:, 10], b[:, 10], atol=0, name="state after a = 0")


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 16, 1000])
@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 1000])
def test_chunked_any_chunk_size(chunk_size, length):
    # Small chunks make the carry between chunks itself two-level (recursion), large ones a single sweep.
    a, b, h0 = _inputs(length, torch.complex128, shape=(2,))
    want = linear_scan(a, b, initial_state=h0, backend="reference")
    assert_close(linear_scan_chunked(a, b, h0, chunk_size=chunk_size), want, atol=1e-12, rtol=1e-12,
                 name=f"chunk {chunk_size}")


@pytest.mark.parametrize("backend", FAST)
def test_negative_growing_and_vanishing_decays(backend):
    a, b, h0 = _inputs(200, shape=(4,))
    a[..., 0] = -a[..., 0]  # alternating signs
    a[:, :30, 1] = 1.05  # |a| > 1 for a while: growth, not just decay
    a[..., 2] = 1e-30  # products of a underflow to 0 within a chunk: nothing may be divided by them
    a[:, ::16, 3] = 0.0  # exact resets, on and off chunk boundaries
    a[:, 5::16, 3] = 0.0
    want = linear_scan(a, b, initial_state=h0, backend="reference")
    for dtype in (torch.float64, torch.float32):
        got = linear_scan(a.to(dtype), b.to(dtype), initial_state=h0.to(dtype), backend=backend)
        assert torch.isfinite(got).all()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(got.double(), want, atol=tol * want.abs().max().item(), rtol=tol, name=f"{dtype} h")


@pytest.mark.parametrize("backend", list(linear_scan_op.backends))
def test_dtype_promotion(backend):
    # A complex initial state makes the states complex even for real a and b; gradients keep input dtypes.
    a, b, h0 = _inputs(20)
    a32 = a.float().requires_grad_(True)
    b64 = b.clone().requires_grad_(True)
    h0c = torch.complex(h0, h0.flip(0)).requires_grad_(True)
    h = linear_scan(a32, b64, initial_state=h0c, backend=backend)
    assert h.dtype == torch.complex128
    want = linear_scan(a32.detach().to(torch.complex128), b.to(torch.complex128), initial_state=h0c.detach(),
                       backend="reference")
    assert_close(h, want, atol=1e-12, name="complex states")
    h.abs().sum().backward()
    assert a32.grad.dtype == torch.float32 and b64.grad.dtype == torch.float64
    assert h0c.grad.dtype == torch.complex128


@pytest.mark.parametrize("backend", FAST)
def test_shared_decay_as_expanded_view(backend):
    # How S5 and LRU call it: one decay per state, expanded over batch and time.
    a, b, h0 = _inputs(40, torch.complex128)
    lam = a[0, 0].clone().requires_grad_(True)
    grads = []
    for name in ("reference", backend):
        lam.grad = None
        linear_scan(lam.expand_as(b), b, initial_state=h0, backend=name).abs().sum().backward()
        grads.append(lam.grad.clone())
    assert_close(grads[1], grads[0], atol=1e-11, rtol=1e-11, name="grad of shared decay")


@pytest.mark.parametrize("backend", FAST)
def test_float32_long_sequence(backend):
    # L = 4096, |a| close to 1: float32 error stays within 1e-4 of the float64 reference (relative to max |h|).
    a, b, h0 = _inputs(4096, shape=(4,), batch=1)
    a = 0.999 + 0.001 * a
    want = linear_scan(a, b, initial_state=h0, backend="reference")
    got = linear_scan(a.float(), b.float(), initial_state=h0.float(), backend=backend)
    assert torch.isfinite(got).all()
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=4096")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("length", [1, 2, 67])
def test_gradients_match_reference(backend, dtype, length):
    a, b, h0 = _inputs(length, dtype)
    for init in (h0, None):
        grads = {}
        for name in ("reference", backend):
            leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
            h, last = linear_scan(*leaves[:2], initial_state=None if init is None else leaves[2],
                                  return_final_state=True, backend=name)
            loss = h.real.sin().sum() + h.imag.cos().sum() if dtype.is_complex else h.sin().sum()
            (loss + (last * last.conj()).real.sum()).backward()
            # With L = 1 and no initial state, a does not reach h: its gradient may be None or zeros.
            grads[name] = [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]
        labels = ("a", "b") if init is None else ("a", "b", "h0")
        for label, got, want in zip(labels, grads[backend], grads["reference"]):
            assert_close(got, want, atol=1e-11, rtol=1e-11, name=f"grad {label} (initial state: {init is not None})")


@pytest.mark.parametrize("backend", list(linear_scan_op.backends))
def test_gradcheck(backend):
    a, b, h0 = (t.requires_grad_(True) for t in _inputs(6, shape=(2,), batch=1))
    assert torch.autograd.gradcheck(lambda *t: linear_scan(t[0], t[1], initial_state=t[2], backend=backend),
                                    (a, b, h0))


@pytest.mark.parametrize("backend", list(linear_scan_op.backends))
def test_split_sequence_passes_state(backend):
    a, b, h0 = _inputs(100)
    whole = linear_scan(a, b, initial_state=h0, backend=backend)
    first, state = linear_scan(a[:, :37], b[:, :37], initial_state=h0, return_final_state=True, backend=backend)
    second = linear_scan(a[:, 37:], b[:, 37:], initial_state=state, backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, name="two pieces vs one")


def test_bad_inputs():
    a, b, h0 = _inputs(8)
    with pytest.raises(ValueError, match=r"a must have shape \(2, 8, 3\)"):
        linear_scan(a[:, :7], b)
    with pytest.raises(ValueError, match=r"\(B, L, \.\.\.\)"):
        linear_scan(a[0, 0], b[0, 0])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 3\)"):
        linear_scan(a, b, initial_state=h0[:1])
    with pytest.raises(ValueError, match="floating point"):
        linear_scan(a, torch.ones(2, 8, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="L >= 1"):
        linear_scan(a[:, :0], b[:, :0])
