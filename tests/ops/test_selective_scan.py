import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssmlab.ops import selective_scan, selective_scan_step
from ssmlab.ops.selective_scan import selective_scan_op
from tests.utils import LENGTHS, assert_close

# The backends that can run here (``numba`` only where Numba is installed); the triton backend has its own tests
# (test_selective_scan_triton.py), through Triton's interpreter.
BACKENDS = [b for b in selective_scan_op.available_backends("cpu") if b != "triton"]
FAST = [b for b in BACKENDS if b != "reference"]
# Which optional arguments a case passes; "plain" has positive delta used as is.
OPTIONS = {
    "plain": {"initial_state": True},
    "no_state": {},
    "D": {"D": True, "initial_state": True},
    "z": {"z": True},
    "bias": {"delta_bias": True, "initial_state": True},
    "softplus": {"delta_softplus": True},
    "all": {"D": True, "z": True, "delta_bias": True, "delta_softplus": True, "initial_state": True},
}


def _inputs(length, groups=None, batch=2, channels=4, n_state=3, dtype=torch.float64, seed=0, options="all"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bc_shape = (batch, length, n_state) if groups is None else (batch, length, groups, n_state)
    args = [r(batch, length, channels), r(batch, length, channels) * 0.5,
            -torch.rand(channels, n_state, generator=g, dtype=torch.float64) * 2, r(*bc_shape), r(*bc_shape)]
    opts = OPTIONS[options]
    if not opts.get("delta_softplus") and not opts.get("delta_bias"):
        args[1] = args[1].abs()
    kwargs = {}
    if opts.get("D"):
        kwargs["D"] = r(channels)
    if opts.get("z"):
        kwargs["z"] = r(batch, length, channels)
    if opts.get("delta_bias"):
        kwargs["delta_bias"] = r(channels) * 0.5 + (0.0 if opts.get("delta_softplus") else 1.0)
    kwargs["delta_softplus"] = opts.get("delta_softplus", False)
    if opts.get("initial_state"):
        kwargs["initial_state"] = r(batch, channels, n_state)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return [cast(a) for a in args], {k: cast(v) for k, v in kwargs.items()}


def test_reference_matches_hand_computation():
    args, kwargs = _inputs(3, channels=2, n_state=2, batch=1)
    u, delta, A, B, C = args
    y, h = selective_scan(*args, **kwargs, return_final_state=True, backend="reference")
    state = kwargs["initial_state"][0]
    for t in range(3):
        dt = torch.nn.functional.softplus(delta[0, t] + kwargs["delta_bias"])
        state = torch.exp(dt[:, None] * A) * state + (dt * u[0, t])[:, None] * B[0, t][None]
        want = (state * C[0, t][None]).sum(-1) + kwargs["D"] * u[0, t]
        want = want * torch.nn.functional.silu(kwargs["z"][0, t])
        assert_close(y[0, t], want, atol=1e-12, name=f"y[{t}]")
    assert_close(h[0], state, atol=1e-12, name="final state")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_reference(backend, groups, options, length):
    args, kwargs = _inputs(length, groups, batch=1, channels=4, n_state=2, options=options)
    want = selective_scan(*args, **kwargs, return_final_state=True, backend="reference")
    got = selective_scan(*args, **kwargs, return_final_state=True, backend=backend)
    assert_close(got[0], want[0], atol=1e-11, rtol=1e-11, name=f"{backend} y")
    assert_close(got[1], want[1], atol=1e-11, rtol=1e-11, name=f"{backend} final state")


@pytest.mark.parametrize("backend", FAST)
def test_float32_long_sequence(backend):
    # L = 4096 in float32 against the float64 reference: within 1e-4 of the output scale.
    args, kwargs = _inputs(4096, 2, batch=1, channels=4, n_state=4)
    want = selective_scan(*args, **kwargs, backend="reference")
    args32 = [a.float() for a in args]
    kwargs32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    got = selective_scan(*args32, **kwargs32, backend=backend)
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=4096")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("length", [1, 70])
def test_gradients_match_reference(backend, groups, options, length):
    args, kwargs = _inputs(length, groups, options=options)
    names = ["u", "delta", "A", "B", "C"] + [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in args]
        kw = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        y, h = selective_scan(*leaves, **kw, return_final_state=True, backend=name)
        (y.sin().sum() + h.square().sum()).backward()
        grads[name] = [t.grad for t in leaves] + [v.grad for v in kw.values() if isinstance(v, torch.Tensor)]
    for label, got, want in zip(names, grads[backend], grads["reference"]):
        assert_close(got, want, atol=1e-10, rtol=1e-10, name=f"grad {label}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("used", ["y", "final_state"])
def test_gradients_when_one_output_is_unused(backend, used):
    args, kwargs = _inputs(40, 2)
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in args]
        y, h = selective_scan(*leaves, **kwargs, return_final_state=True, backend=name)
        (y.sum() if used == "y" else h.sum()).backward()
        # C does not reach the final state: autograd leaves its gradient None, a backend may give zeros.
        grads[name] = [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]
    for label, got, want in zip("u delta A B C".split(), grads[backend], grads["reference"]):
        assert_close(got, want, atol=1e-10, rtol=1e-10, name=f"grad {label}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    args, kwargs = _inputs(5, 1, batch=1, channels=2, n_state=2)
    tensors = args + [kwargs[k] for k in ("D", "z", "delta_bias", "initial_state")]
    tensors = [t.requires_grad_(True) for t in tensors]

    def fn(u, delta, A, B, C, D, z, bias, h0):
        y, h = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, initial_state=h0,
                              return_final_state=True, backend=backend)
        return y, h

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    args, kwargs = _inputs(90, 2)
    whole = selective_scan(*args, **kwargs, backend=backend)
    cut = lambda t, s: t[:, s] if isinstance(t, torch.Tensor) and t.dim() >= 3 else t  # noqa: E731
    first_kw = {k: cut(v, slice(0, 41)) for k, v in kwargs.items()}
    y1, state = selective_scan(*[cut(a, slice(0, 41)) for a in args], **first_kw, return_final_state=True,
                               backend=backend)
    second_kw = {k: cut(v, slice(41, None)) for k, v in kwargs.items() if k != "initial_state"}
    y2 = selective_scan(*[cut(a, slice(41, None)) for a in args], **second_kw, initial_state=state, backend=backend)
    assert_close(torch.cat([y1, y2], 1), whole, atol=1e-12, name="two pieces vs one")


def test_step_matches_forward():
    args, kwargs = _inputs(9, 2)
    u, delta, A, B, C = args
    want, want_state = selective_scan(*args, **kwargs, return_final_state=True)
    state = kwargs["initial_state"]
    for t in range(9):
        y, state = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], state, D=kwargs["D"],
                                       z=kwargs["z"][:, t], delta_bias=kwargs["delta_bias"], delta_softplus=True)
        assert_close(y, want[:, t], atol=1e-12, name=f"step {t}")
    assert_close(state, want_state, atol=1e-12, name="state after steps")


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", FAST)
def test_training_memory_is_o_bld(backend):
    """Autograd keeps the inputs and one (B, D, N) state per chunk of 16, not O(B L D N) as for the reference."""
    batch, length, channels, n_state = 1, 256, 16, 16
    args, kwargs = _inputs(length, None, batch, channels, n_state)
    kept = {}
    for name in ("reference", backend):
        leaves = [a.clone().requires_grad_(True) for a in args]
        total = [0]

        def pack(t):
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selective_scan(*leaves, **kwargs, backend=name)
        kept[name] = total[0]
    inputs = sum(t.numel() for t in args) + sum(t.numel() for t in kwargs.values() if isinstance(t, torch.Tensor))
    chunk_states = (length // 16) * batch * channels * n_state
    assert kept[backend] <= inputs + chunk_states, kept
    assert kept["reference"] > batch * length * channels * n_state, kept


@pytest.mark.parametrize("backend", FAST)
def test_never_materialises_the_whole_expanded_state(backend):
    # D, N > 16 (the chunk): the states kept for backward, (L / 16, B, D, N), outgrow every input.
    batch, length, channels, n_state = 1, 1024, 32, 32
    args, kwargs = _inputs(length, None, batch, channels, n_state)
    whole = batch * length * channels * n_state
    leaves = [a.requires_grad_(True) for a in args]
    # Inference: nothing larger than the inputs: one chunk at a time, and no chunk states kept.
    largest_input = max(t.numel() for t in args)
    with torch.no_grad(), LargestTensor() as mode:
        selective_scan(*leaves, **kwargs, backend=backend)
    assert mode.largest <= largest_input, f"{backend} inference made {mode.largest} elements"
    # Training, forward and backward: a per-chunk state is kept, still far from (B, L, D, N).
    with LargestTensor() as mode:
        y = selective_scan(*leaves, **kwargs, backend=backend)
        y.sum().backward()
    assert mode.largest < whole / 8, f"{backend} made a tensor of {mode.largest} elements (whole: {whole})"
    # And the check itself works: an explicit expansion to (B, L, D, N) is caught.
    with LargestTensor() as mode:
        torch.exp(args[1].detach()[..., None] * args[2].detach())
    assert mode.largest == whole


def test_bad_inputs():
    args, kwargs = _inputs(8, 2)
    u, delta, A, B, C = args
    with pytest.raises(ValueError, match=r"delta must have shape \(2, 8, 4\)"):
        selective_scan(u, delta[:, :7], A, B, C)
    with pytest.raises(ValueError, match="real"):
        selective_scan(u, delta, A.to(torch.complex128), B, C)
    with pytest.raises(ValueError, match="3 groups, which does not divide D=4"):
        selective_scan(u, delta, A, torch.randn(2, 8, 3, 3, dtype=torch.float64), C)
    with pytest.raises(ValueError, match=r"u must have shape \(B, L, D\)"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(4, N\)"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 4, 3\)"):
        selective_scan(u, delta, A, B, C, initial_state=torch.zeros(2, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4, 3\)"):
        selective_scan_step(u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 activations with float32 A, D and bias (as under autocast): computed in float32, y in bfloat16."""
    args, kwargs = _inputs(50, 2)
    low = [a.to(torch.bfloat16).requires_grad_(True) for a in args[:2]] + [args[2].float().requires_grad_(True)] \
        + [a.to(torch.bfloat16).requires_grad_(True) for a in args[3:]]
    kw = {k: (v.to(torch.bfloat16) if k == "z" else v.float()).requires_grad_(True) if isinstance(v, torch.Tensor)
          else v for k, v in kwargs.items()}
    y, h = selective_scan(*low, **kw, return_final_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want = selective_scan(*[a.detach().double() for a in low],
                          **{k: v.detach().double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
                          backend="reference")
    assert_close(y.double(), want, atol=1e-2 * want.abs().max().item(), name="bfloat16 y")
    (y.float().sum() + h.sum()).backward()
    for t in low + [v for v in kw.values() if isinstance(v, torch.Tensor)]:
        assert t.grad is not None and t.grad.dtype == t.dtype and torch.isfinite(t.grad.float()).all()
