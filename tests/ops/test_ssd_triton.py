"""The triton backend of ``ssd`` against the reference: on the CPU through Triton's interpreter (small shapes,
float32 and float64 against the float64 reference), and on a GPU at Mamba-2's layer size (B=4, H=24, P=64, N=128)."""

import importlib

import pytest
import torch

from ssmlab.ops import ssd
from ssmlab.ops.ssd import ssd_op
from tests.triton_utils import use_triton
from tests.utils import assert_close

tl = pytest.importorskip("triton.language")

MODULES = ("ssmlab.ops._triton_chunk", "ssmlab.ops.ssd.triton")


@pytest.fixture
def interpreter(monkeypatch):
    use_triton(monkeypatch, ssd_op, MODULES, interpret=True)


@pytest.fixture
def compiled(monkeypatch):
    use_triton(monkeypatch, ssd_op, MODULES, interpret=False)


def _inputs(batch, length, heads, head_dim, n_state, groups, d_shape="hp", device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(batch, length, heads, head_dim)
    dt = torch.rand(batch, length, heads, generator=g, dtype=torch.float64) * 0.5 + 0.01
    A = -torch.rand(heads, generator=g, dtype=torch.float64) * 2 - 0.1
    B, C = r(batch, length, groups, n_state), r(batch, length, groups, n_state)
    kwargs = {"D": r(heads, head_dim) if d_shape == "hp" else r(heads) if d_shape == "h" else None,
              "initial_state": r(batch, heads, head_dim, n_state)}
    return [t.to(device) for t in (x, dt, A, B, C)], {k: v if v is None else v.to(device) for k, v in kwargs.items()}


def _check(args, kwargs, dtype, tol, chunk_size=16, initial_state=True, reference="reference"):
    """y, the final state and the gradient of every input of the triton backend (x, B and C in ``dtype``; dt, A,
    D and the state, precision-sensitive, in float32 at least as the mixer has them) against ``reference`` in
    float64 (same rounded inputs), within ``tol`` of each quantity's largest value."""
    if not initial_state:
        kwargs = {**kwargs, "initial_state": None}
    names = ["x", "dt", "A", "B", "C"] + [k for k, v in kwargs.items() if v is not None]
    high = torch.promote_types(dtype, torch.float32)
    casts = [dtype, high, high, dtype, dtype]  # x, dt, A, B, C
    results = {}
    for backend, compute in ((reference, torch.float64), ("triton", None)):
        leaves = [a.to(c).to(compute or c).detach().clone().requires_grad_(True) for a, c in zip(args, casts)]
        kw = {k: None if v is None else v.to(high).to(compute or high).detach().clone().requires_grad_(True)
              for k, v in kwargs.items()}
        y, h = ssd(*leaves, **kw, chunk_size=chunk_size, return_final_state=True, backend=backend)
        g = torch.Generator(device=y.device).manual_seed(1)
        wy = torch.randn(y.shape, generator=g, dtype=torch.float64, device=y.device)
        wh = torch.randn(h.shape, generator=g, dtype=torch.float64, device=y.device)
        ((y.double() * wy).sum() + (h.double() * wh).sum()).backward()
        results[backend] = [y, h] + [t.grad for t in leaves] + [v.grad for v in kw.values() if v is not None]
    y, h = results["triton"][:2]
    assert y.dtype == dtype and h.dtype == torch.promote_types(dtype, torch.float32)
    for label, got, want in zip(["y", "final state"] + [f"grad {n}" for n in names], results["triton"],
                                results[reference]):
        assert torch.isfinite(got).all(), label
        assert_close(got.double(), want, atol=tol * want.abs().max().item(), name=label)


# (batch, length, heads, head_dim, n_state, groups, D, chunk_size): every option; L = 37 is not a multiple of the
# chunk; two heads per group (their dB and dC add up); a chunk_size that is not a power of two (rounded up to 32,
# in two blocks of 16).
CASES = [(1, 37, 4, 3, 5, 2, "hp", 16), (2, 21, 2, 4, 3, 1, "h", 16), (1, 45, 2, 2, 17, 2, None, 20)]


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_float32_matches_reference(interpreter, monkeypatch, case):
    *shape, d_shape, chunk_size = case
    if case == CASES[0]:  # all the heads of a group in one program of the dB and dC kernels (not one head each)
        monkeypatch.setattr(importlib.import_module(MODULES[0]), "_PROGRAMS", 1)
    if case == CASES[2]:  # chunks of two blocks (as T = 256 on a GPU, in blocks of 64)
        monkeypatch.setattr(importlib.import_module(MODULES[0]), "_BLOCK_M", 16)
    args, kwargs = _inputs(*shape, d_shape=d_shape)
    _check(args, kwargs, torch.float32, 2e-5, chunk_size=chunk_size, initial_state=d_shape != "h")


@pytest.mark.triton
def test_float64_matches_reference_exactly(interpreter):
    args, kwargs = _inputs(1, 19, 2, 3, 4, 1)
    _check(args, kwargs, torch.float64, 1e-12)


@pytest.mark.triton
def test_bfloat16_inputs(interpreter, monkeypatch):
    """bf16 x, B, C (float32 dt, A, D, state): y and the gradients near the float64 reference. Triton
    3.9's interpreter multiplies bf16 blocks wrongly in ``tl.dot``, so here the products take the bf16 values
    in float32; the GPU tests run the bf16 products themselves."""
    monkeypatch.setitem(importlib.import_module(MODULES[0])._TL_DTYPES, torch.bfloat16, tl.float32)
    args, kwargs = _inputs(1, 37, 4, 3, 5, 2)
    _check(args, kwargs, torch.bfloat16, 2e-2)


@pytest.mark.triton
def test_one_position(interpreter):
    args, kwargs = _inputs(1, 1, 2, 2, 3, 1)
    _check(args, kwargs, torch.float32, 2e-5)



@pytest.mark.triton
def test_right_padding_with_zero_dt(interpreter):
    """The mixers' ``lengths`` contract reaches the op as dt = 0 on the padding: the state is kept there, and the
    gradients of the real positions (of an output-only loss) are those of the unpadded sequence."""
    args, kwargs = _inputs(1, 30, 2, 3, 4, 1, seed=3)
    real = 21
    args[1][:, real:] = 0.0
    cut = [a[:, :real] if a.dim() > 1 else a for a in args]
    results = {}
    for backend, inputs in (("reference", cut), ("triton", args)):
        leaves = [a.float().detach().clone().requires_grad_(True) for a in inputs]
        kw = {k: v.float().detach().clone().requires_grad_(True) for k, v in kwargs.items()}
        y, h = ssd(*leaves, **kw, chunk_size=16, return_final_state=True, backend=backend)
        y[:, :real].sin().sum().backward()
        results[backend] = [y[:, :real], h] + [t.grad[:, :real] if t.dim() > 1 else t.grad for t in leaves] + \
            [v.grad for v in kw.values()]
        if backend == "triton":
            for t in leaves[:2] + leaves[3:]:
                assert not t.grad[:, real:].any(), "padding has a gradient"
    for label, got, want in zip(["y", "final state", "x", "dt", "A", "B", "C", "D", "h0"], results["triton"],
                                results["reference"]):
        assert_close(got, want, atol=2e-5 * want.abs().max().item(), name=label)

@pytest.mark.gpu
@pytest.mark.parametrize("length", [2048, 8192])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_real_size_on_gpu(compiled, length, dtype, tol):
    """Mamba-2 1.3B's layer (B=4, H=24, P=64, N=128, chunks of 256 as the mixer's) against the chunked torch
    backend in float64 (itself checked against the reference in tests/ops/test_ssd.py; the reference's autograd
    over 8192 steps does not fit)."""
    args, kwargs = _inputs(4, length, 24, 64, 128, 1, device="cuda")
    _check(args, kwargs, dtype, tol, chunk_size=256, reference="torch")


@pytest.mark.gpu
def test_real_size_against_reference_on_gpu(compiled):
    args, kwargs = _inputs(1, 2048, 24, 64, 128, 1, device="cuda")
    _check(args, kwargs, torch.float32, 1e-4, chunk_size=64)


@pytest.mark.triton
def test_benchmark_cases_agree(interpreter):
    """benchmarks/gpu_cases/ssd.py: its tiny case gives the same outputs and gradients through triton and torch."""
    from benchmarks.gpu_cases.ssd import cases

    for case in cases("tiny"):
        results = {}
        for name in ("triton", "torch"):
            inputs = case["inputs"]("cpu", torch.float32)
            y, h = case["run"][name](**inputs)
            (y.sum() + h.sum()).backward()
            results[name] = [y, h] + [t.grad for t in inputs.values()]
        for got, want in zip(results["triton"], results["torch"]):
            assert_close(got, want, atol=2e-5 * want.abs().max().item(), name=case["name"])
