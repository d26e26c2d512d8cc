import pytest
import torch
from einops import rearrange, repeat

from ssmlab.ops import selective_scan, ssd, ssd_step
from ssmlab.ops.ssd import ssd_op
from ssmlab.ops.ssd.torch import segment_sum
from tests.utils import LENGTHS, assert_close

# The triton backend has its own tests (test_ssd_triton.py), through Triton's interpreter.
BACKENDS = [b for b in ssd_op.backends if b != "triton"]
FAST = [b for b in BACKENDS if b != "reference"]


def _inputs(length, groups=1, batch=2, heads=4, head_dim=3, n_state=5, d_shape="h", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(batch, length, heads, head_dim)
    dt = torch.rand(batch, length, heads, generator=g, dtype=torch.float64) * 0.5 + 0.01
    A = -torch.rand(heads, generator=g, dtype=torch.float64) * 2 - 0.1
    B, C = r(batch, length, groups, n_state), r(batch, length, groups, n_state)
    D = r(heads) if d_shape == "h" else r(heads, head_dim)
    h0 = r(batch, heads, head_dim, n_state)
    return (x, dt, A, B, C), {"D": D, "initial_state": h0}


def test_segment_sum():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    s = segment_sum(a)
    assert s[3, 1] == 7.0 and s[2, 2] == 0.0 and s[3, 0] == 9.0 and s[1, 2] == float("-inf")


# Chunk sizes for the chunked backend: one position, not dividing any tested L, the default, and L itself.
@pytest.mark.parametrize("backend, chunk_size",
                         [(b, c) for b in FAST for c in ((1, 7, 64, "L") if b != "quadratic" else (64,))])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_reference(backend, chunk_size, groups, length):
    args, kwargs = _inputs(length, groups, batch=1, heads=2, head_dim=2, n_state=2, d_shape="h" if groups == 1 else "hp")
    chunk_size = length if chunk_size == "L" else chunk_size
    want = ssd(*args, **kwargs, return_final_state=True, backend="reference")
    got = ssd(*args, **kwargs, chunk_size=chunk_size, return_final_state=True, backend=backend)
    assert_close(got[0], want[0], atol=1e-10, rtol=1e-10, name=f"{backend}/{chunk_size} y")
    assert_close(got[1], want[1], atol=1e-10, rtol=1e-10, name=f"{backend}/{chunk_size} final state")


@pytest.mark.parametrize("backend", FAST)
def test_without_skip_or_initial_state(backend):
    args, _ = _inputs(65, 2)
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in args]
        y, h = ssd(*leaves, chunk_size=7, return_final_state=True, backend=name)
        (y.sin().sum() + h.square().sum()).backward()
        grads[name] = [y, h] + [t.grad for t in leaves]
    for label, got, want in zip(["y", "final state", "x", "dt", "A", "B", "C"], grads[backend], grads["reference"]):
        assert_close(got, want, atol=1e-10, rtol=1e-10, name=label)


def test_chunked_float32_long_sequence():
    # L = 4096 in float32 against the float64 reference: within 1e-4 of the output scale.
    args, kwargs = _inputs(4096, 2, batch=1, heads=2, head_dim=2, n_state=4)
    want = ssd(*args, **kwargs, backend="reference")
    got = ssd(*[a.float() for a in args], **{k: v.float() for k, v in kwargs.items()}, backend="chunked")
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=4096")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("length", [1, 70])
def test_gradients_match_reference(backend, length):
    args, kwargs = _inputs(length, 2, d_shape="hp")
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in args]
        kw = {k: v.clone().requires_grad_(True) for k, v in kwargs.items()}
        y, h = ssd(*leaves, **kw, chunk_size=16, return_final_state=True, backend=name)
        (y.sin().sum() + h.square().sum()).backward()
        grads[name] = [t.grad for t in leaves] + [v.grad for v in kw.values()]
    for label, got, want in zip(["x", "dt", "A", "B", "C", "D", "h0"], grads[backend], grads["reference"]):
        assert torch.isfinite(got).all(), label
        assert_close(got, want, atol=1e-10, rtol=1e-10, name=f"grad {label}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    args, kwargs = _inputs(5, 1, batch=1, heads=2, head_dim=2, n_state=2)
    tensors = [t.requires_grad_(True) for t in list(args) + [kwargs["D"], kwargs["initial_state"]]]

    def fn(x, dt, A, B, C, D, h0):
        return ssd(x, dt, A, B, C, D=D, initial_state=h0, chunk_size=2, return_final_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    args, kwargs = _inputs(50, 2)
    whole = ssd(*args, **kwargs, chunk_size=8, backend=backend)
    y1, state = ssd(*[a[:, :23] if a.dim() > 1 else a for a in args], **kwargs, chunk_size=8,
                    return_final_state=True, backend=backend)
    y2 = ssd(*[a[:, 23:] if a.dim() > 1 else a for a in args], D=kwargs["D"], initial_state=state, chunk_size=8,
             backend=backend)
    assert_close(torch.cat([y1, y2], 1), whole, atol=1e-11, name="two pieces vs one")


def test_step_matches_forward():
    args, kwargs = _inputs(11, 2)
    x, dt, A, B, C = args
    want, want_state = ssd(*args, **kwargs, return_final_state=True)
    state = kwargs["initial_state"]
    for t in range(11):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D=kwargs["D"])
        assert_close(y, want[:, t], atol=1e-11, name=f"step {t}")
    assert_close(state, want_state, atol=1e-11, name="state after steps")


def test_equals_selective_scan_on_equivalent_inputs():
    """SSD is the selective scan with A[d, n] = A[h] for every channel d = (h, p), delta = dt[h]."""
    args, kwargs = _inputs(40, 2, heads=4, head_dim=3, n_state=5)
    x, dt, A, B, C = args
    y, h = ssd(*args, D=kwargs["D"], initial_state=kwargs["initial_state"], chunk_size=16, return_final_state=True)
    head_dim = 3
    u = rearrange(x, "b l h p -> b l (h p)")
    delta = repeat(dt, "b l h -> b l (h p)", p=head_dim)
    A_full = repeat(A, "h -> (h p) n", p=head_dim, n=5)
    # Channel (h, p) reads group h // 2; selective_scan's groups split channels the same way.
    y2, h2 = selective_scan(u, delta, A_full, B, C, D=repeat(kwargs["D"], "h -> (h p)", p=head_dim),
                            initial_state=rearrange(kwargs["initial_state"], "b h p n -> b (h p) n"),
                            return_final_state=True)
    assert_close(rearrange(y, "b l h p -> b l (h p)"), y2, atol=1e-11, name="ssd vs selective scan")
    assert_close(rearrange(h, "b h p n -> b (h p) n"), h2, atol=1e-11, name="final states")


def test_bad_inputs():
    args, kwargs = _inputs(8, 2)
    x, dt, A, B, C = args
    with pytest.raises(ValueError, match=r"dt must have shape \(2, 8, 4\)"):
        ssd(x, dt[:, :5], A, B, C)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, H, P\)"):
        ssd(x[0], dt, A, B, C)
    with pytest.raises(ValueError, match="real"):
        ssd(x, dt, A.to(torch.complex128), B, C)
    with pytest.raises(ValueError, match="3 groups, which does not divide the 4 heads"):
        ssd(x, dt, A, torch.randn(2, 8, 3, 5, dtype=torch.float64), torch.randn(2, 8, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"C must have shape \(2, 8, 2, 5\)"):
        ssd(x, dt, A, B, C[..., :4])
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(*args, chunk_size=0)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 4, 3, 5\)"):
        ssd(*args, initial_state=torch.zeros(2, 4, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 activations with float32 A and D: computed in float32, y in bfloat16, the state in float32."""
    args, kwargs = _inputs(50, 2)
    x, dt, A, B, C = args
    low = [x.bfloat16(), dt.float(), A.float(), B.bfloat16(), C.bfloat16()]
    y, h = ssd(*low, D=kwargs["D"].float(), chunk_size=16, return_final_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want = ssd(*[t.double() for t in low], D=kwargs["D"].float().double(), backend="reference")
    assert_close(y.double(), want, atol=1e-2 * want.abs().max().item(), name="bfloat16 y")
    y_t, _ = ssd_step(low[0][:, 0], low[1][:, 0], low[2], low[3][:, 0], low[4][:, 0],
                      torch.zeros_like(h), D=kwargs["D"].float())
    assert y_t.dtype == torch.bfloat16


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", [1, 40, 70])
def test_chunked_without_autograd_matches_with(initial_state, length):
    """The torch backend updates its intermediates in place when nothing needs a gradient: same y and state."""
    args, kwargs = _inputs(length, 2, batch=2, d_shape="hp")
    kwargs["initial_state"] = kwargs["initial_state"] if initial_state else None
    with torch.no_grad():
        y, h = ssd(*args, **kwargs, chunk_size=16, return_final_state=True, backend="torch")
    x = args[0].clone().requires_grad_(True)
    y_grad, h_grad = ssd(x, *args[1:], **kwargs, chunk_size=16, return_final_state=True, backend="torch")
    assert_close(y, y_grad, atol=1e-12, name="y without autograd")
    assert_close(h, h_grad, atol=1e-12, name="final state without autograd")
    assert_close(y, ssd(*args, **kwargs, backend="reference"), atol=1e-10, name="y against the reference")


def test_chunked_caps_the_chunk_on_the_cpu():
    """A chunk longer than CPU_CHUNK is the same function (the torch backend runs CPU_CHUNK on the CPU)."""
    args, kwargs = _inputs(300, 2, batch=1, heads=2, head_dim=2, n_state=3)
    want = ssd(*args, **kwargs, backend="reference")
    for chunk_size in (256, 1000):
        assert_close(ssd(*args, **kwargs, chunk_size=chunk_size, backend="torch"), want, atol=1e-10,
                     name=f"chunk_size={chunk_size}")


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_strong_decay(dtype, atol):
    """Decays far below the smallest normal number (exponents to -5000) are exactly what they are: the torch
    backend's floor on the exponents changes nothing visible, and nothing underflows to NaN."""
    args, kwargs = _inputs(100, 2, batch=2)
    x, dt, A, B, C = args
    A = A * 0 - 50.0  # a = dt A down to -25 per step
    want, want_state = ssd(x, dt, A, B, C, **kwargs, return_final_state=True, backend="reference")
    got, state = ssd(*[t.to(dtype) for t in (x, dt, A, B, C)], **{k: v.to(dtype) for k, v in kwargs.items()},
                     chunk_size=64, return_final_state=True, backend="torch")
    assert_close(got.double(), want, atol=atol, name="y")
    assert_close(state.double(), want_state, atol=atol, name="final state")
