import pytest
import torch

from ssmlab.ops import linear_scan
from ssmlab.ops.scan import linear_scan_op
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
def test_gradients_match_reference(backend, dtype):
    a, b, h0 = _inputs(67, dtype)
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
        h = linear_scan(*leaves[:2], initial_state=leaves[2], backend=name)
        (h.real.sin().sum() + h.imag.cos().sum() if dtype.is_complex else h.sin().sum()).backward()
        grads[name] = [t.grad for t in leaves]
    for label, got, want in zip(("a", "b", "h0"), grads[backend], grads["reference"]):
        assert_close(got, want, atol=1e-11, rtol=1e-11, name=f"grad {label}")


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
