import pytest
import torch

from ssmlab import ops
from ssmlab.ops import wkv, wkv_step
from ssmlab.ops.wkv import EMPTY_EXPONENT, wkv_op
from tests.utils import LENGTHS, assert_close


def naive_wkv(k, v, w, u):
    """Eq. (14) of arXiv 2305.13048 summed term by term (overflows for large keys)."""
    length = k.shape[1]
    out = []
    for t in range(length):
        i = torch.arange(t)
        weights = torch.exp(-(t - 1 - i)[:, None] * w + k[:, :t])  # (B, t, D)
        bonus = torch.exp(u + k[:, t])
        out.append(((weights * v[:, :t]).sum(1) + bonus * v[:, t]) / (weights.sum(1) + bonus))
    return torch.stack(out, 1)


def _inputs(length, dim=5, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = scale * torch.randn(2, length, dim, generator=g, dtype=torch.float64)
    v = torch.randn(2, length, dim, generator=g, dtype=torch.float64)
    w = torch.exp(torch.linspace(-5, 1, dim, dtype=torch.float64))
    u = torch.linspace(-1, 1, dim, dtype=torch.float64)
    return k, v, w, u


def _state(batch=2, dim=5, seed=1):
    """A state of some earlier positions: a, b > 0 with b > 0 as for real sums, p of the size of keys."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    b = torch.rand(batch, dim, generator=g, dtype=torch.float64) + 0.5
    return a, b, torch.randn(batch, dim, generator=g, dtype=torch.float64)


def _stepped(k, v, w, u, state=None):
    if state is None:
        state = (torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]), torch.full_like(k[:, 0], EMPTY_EXPONENT))
    outs = []
    for t in range(k.shape[1]):
        y, state = wkv_step(k[:, t], v[:, t], w, u, state)
        outs.append(y)
    return torch.stack(outs, 1), state


def test_backends():
    assert {"reference", "torch"} <= set(wkv_op.available_backends("cpu"))
    assert wkv_op.backends["torch"].priority > wkv_op.backends["reference"].priority
    assert ops.wkv is wkv and ops.wkv_step is wkv_step


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("length", [1, 2, 5, 17, 50])
def test_backends_are_the_naive_formula(backend, length):
    k, v, w, u = _inputs(length)
    want = naive_wkv(k, v, w, u)
    assert_close(wkv(k, v, w, u, backend=backend), want, atol=1e-12, rtol=1e-10, name=f"{backend} wkv vs naive")


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(with_state, length):
    k, v, w, u = _inputs(length, seed=length)
    state = _state() if with_state else None
    want, want_state = wkv(k, v, w, u, initial_state=state, return_final_state=True, backend="reference")
    got, got_state = wkv(k, v, w, u, initial_state=state, return_final_state=True, backend="torch")
    assert_close(got, want, atol=1e-12, rtol=1e-10, name="torch wkv")
    for name, a, b in zip("abp", got_state, want_state):
        assert_close(a, b, atol=1e-12, rtol=1e-10, name=f"torch final state {name}")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("length", [1, 2, 40])
def test_step_and_split_forward_match_forward(backend, length):
    k, v, w, u = _inputs(length)
    want, want_state = wkv(k, v, w, u, initial_state=_state(), return_final_state=True, backend=backend)
    y, state = _stepped(k, v, w, u, _state())
    assert_close(y, want, atol=1e-12, rtol=1e-10, name="step vs forward")
    a = length // 3
    y1, s = wkv(k[:, :a], v[:, :a], w, u, initial_state=_state(), return_final_state=True, backend=backend) \
        if a else (y[:, :0], _state())
    y2, s = wkv(k[:, a:], v[:, a:], w, u, initial_state=s, return_final_state=True, backend=backend)
    assert_close(torch.cat([y1, y2], 1), want, atol=1e-12, rtol=1e-10, name="wkv in two pieces")
    for name, got, stepped, one in zip("abp", s, state, want_state):
        assert_close(got, one, atol=1e-12, rtol=1e-10, name=f"state {name}: pieces vs one call")
        assert_close(stepped, one, atol=1e-12, rtol=1e-10, name=f"state {name}: steps vs one call")


def test_empty_state_is_no_state():
    k, v, w, u = _inputs(9)
    empty = (torch.zeros(2, 5, dtype=torch.float64),) * 2 + (torch.full((2, 5), EMPTY_EXPONENT, dtype=torch.float64),)
    for backend in ("reference", "torch"):
        assert_close(wkv(k, v, w, u, initial_state=empty, backend=backend), wkv(k, v, w, u, backend=backend),
                     atol=0, name=f"{backend}: empty state vs None")


@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length):
    inputs = _inputs(length) + _state()
    grads = {}
    for backend in ("reference", "torch"):
        k, v, w, u, a, b, p = (t.clone().requires_grad_(True) for t in inputs)
        y, (fa, fb, fp) = wkv(k, v, w, u, initial_state=(a, b, p), return_final_state=True, backend=backend)
        # The state's sums are a e^p and b e^p; p alone is not differentiable (it is detached).
        (y.sin().sum() + (fa * fp.exp()).sum() + (fb * fp.exp()).square().sum()).backward()
        grads[backend] = [t.grad for t in (k, v, w, u, a, b, p)]
    for name, got, want in zip(["k", "v", "w", "u", "a0", "b0", "p0"], grads["torch"], grads["reference"]):
        assert torch.isfinite(got).all(), name
        assert_close(got, want, atol=1e-10, rtol=1e-8, name=f"grad of {name}")


def test_gradients_match_the_naive_formula():
    k, v, w, u = (t.requires_grad_(True) for t in _inputs(12))
    want = torch.autograd.grad(naive_wkv(k, v, w, u).sin().sum(), (k, v, w, u))
    for backend in ("reference", "torch"):
        got = torch.autograd.grad(wkv(k, v, w, u, backend=backend).sin().sum(), (k, v, w, u))
        for name, a, b in zip("kvwu", got, want):
            assert_close(a, b, atol=1e-10, rtol=1e-8, name=f"{backend} grad of {name}")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gradcheck(backend):
    k, v, w, u = (t.requires_grad_(True) for t in _inputs(6, dim=2))
    assert torch.autograd.gradcheck(lambda *a: wkv(*a, backend=backend), (k, v, w, u))


def test_no_overflow_with_large_keys_in_float32():
    k, v, w, u = _inputs(300, dim=4, scale=1.0, seed=1)
    k = 100 * torch.sign(k) + k  # keys of magnitude about 100: e^100 overflows float32
    want = wkv(k, v, w, u, backend="reference")  # float64, stable
    k32, v32, w32, u32 = (t.float() for t in (k, v, w, u))
    assert not torch.isfinite(naive_wkv(k32[:, :20], v32[:, :20], w32, u32)).all()  # the naive form does overflow
    for label, y in (("torch", wkv(k32, v32, w32, u32, backend="torch")), ("step", _stepped(k32, v32, w32, u32)[0])):
        assert y.dtype == torch.float32 and torch.isfinite(y).all(), label
        # Each wkv is a weighted mean of values (|v| < 5): float32 keeps ~1e-5 of it.
        assert_close(y, want, atol=1e-4, rtol=1e-4, name=f"{label} float32 wkv with keys ~100")


def test_bad_inputs():
    k, v, w, u = _inputs(4)
    with pytest.raises(ValueError, match="v must have shape"):
        wkv(k, v[:, :3], w, u)
    with pytest.raises(ValueError, match="w must have shape"):
        wkv(k, v, w[:3], u)
    with pytest.raises(ValueError, match="L >= 1"):
        wkv(k[:, :0], v[:, :0], w, u)
    with pytest.raises(ValueError, match="triple"):
        wkv(k, v, w, u, initial_state=_state()[:2])
    with pytest.raises(ValueError, match=r"state\[p\] must have shape"):
        wkv_step(k[:, 0], v[:, 0], w, u, _state()[:2] + (torch.zeros(2, 4),))
