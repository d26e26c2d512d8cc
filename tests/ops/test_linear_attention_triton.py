"""The triton backend of ``linear_attention`` against the reference: on the CPU through Triton's interpreter
(small shapes, float32 and float64 against the float64 reference), and on a GPU at real sizes."""

import importlib

import pytest
import torch

from ssmlab.ops import linear_attention
from ssmlab.ops.linear_attention import linear_attention_op
from tests.triton_utils import use_triton
from tests.utils import assert_close

pytest.importorskip("triton")

MODULES = ("ssmlab.ops._triton_chunk", "ssmlab.ops.linear_attention.triton")


@pytest.fixture
def interpreter(monkeypatch):
    use_triton(monkeypatch, linear_attention_op, MODULES, interpret=True)


@pytest.fixture
def compiled(monkeypatch):
    use_triton(monkeypatch, linear_attention_op, MODULES, interpret=False)


def _inputs(batch, length, heads, key_dim, value_dim, decay=True, state=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = {"q": r(batch, length, heads, key_dim) / key_dim ** 0.5, "k": r(batch, length, heads, key_dim),
              "v": r(batch, length, heads, value_dim)}
    if decay:
        inputs["log_decay"] = torch.log(1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64)))  # RetNet's
    if state:
        inputs["initial_state"] = r(batch, heads, key_dim, value_dim)
    return {k: v.to(device) for k, v in inputs.items()}


def _check(inputs, dtype, tol, chunk_size=16, reference="reference"):
    """y, the final state and the gradient of every input of the triton backend (inputs in ``dtype``) against
    ``reference`` in float64 (same rounded inputs), within ``tol`` of each quantity's largest value."""
    results = {}
    for backend, dt in ((reference, torch.float64), ("triton", dtype)):
        leaves = {k: v.to(dtype).to(dt).detach().clone().requires_grad_(True) for k, v in inputs.items()}
        y, h = linear_attention(**leaves, chunk_size=chunk_size, return_final_state=True, backend=backend)
        g = torch.Generator(device=y.device).manual_seed(1)
        wy = torch.randn(y.shape, generator=g, dtype=torch.float64, device=y.device)
        wh = torch.randn(h.shape, generator=g, dtype=torch.float64, device=y.device)
        ((y.double() * wy).sum() + (h.double() * wh).sum()).backward()
        results[backend] = [y, h] + [t.grad for t in leaves.values()]
    assert results["triton"][0].dtype == dtype and results["triton"][1].dtype == dtype
    for label, got, want in zip(["y", "final state"] + [f"grad {n}" for n in inputs], results["triton"],
                                results[reference]):
        assert torch.isfinite(got).all(), label
        assert_close(got.double(), want, atol=tol * want.abs().max().item(), name=label)


# (batch, length, heads, key_dim, value_dim, decay, initial state, chunk_size): retention with a state, plain
# linear attention, K != V and neither a power of two, L not a multiple of the chunk, a chunk size rounded up
# (to 32, in two blocks of 16).
CASES = [(1, 37, 2, 3, 5, True, True, 16), (2, 21, 1, 4, 4, False, False, 16), (1, 45, 2, 17, 6, True, False, 20)]


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_float32_matches_reference(interpreter, monkeypatch, case):
    *shape, decay, state, chunk_size = case
    if case == CASES[2]:  # chunks of two blocks (as T = 256 on a GPU, in blocks of 64)
        monkeypatch.setattr(importlib.import_module(MODULES[0]), "_BLOCK_M", 16)
    _check(_inputs(*shape, decay=decay, state=state), torch.float32, 2e-5, chunk_size=chunk_size)


@pytest.mark.triton
def test_float64_matches_reference_exactly(interpreter):
    _check(_inputs(1, 19, 2, 3, 4), torch.float64, 1e-12)


@pytest.mark.triton
def test_normaliser_column(interpreter):
    """Katharopoulos' normaliser through a column of ones appended to v (the mixers' use): its gradient too."""
    inputs = _inputs(1, 20, 1, 4, 3, decay=False, state=False)
    inputs["q"], inputs["k"] = torch.nn.functional.elu(inputs["q"]) + 1, torch.nn.functional.elu(inputs["k"]) + 1
    inputs["v"] = torch.cat([inputs["v"], torch.ones_like(inputs["v"][..., :1])], -1)
    _check(inputs, torch.float32, 2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("length", [2048, 8192])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_real_size_on_gpu(compiled, length, dtype, tol):
    """B=4, H=24, K=128, V=64 (SSD's Mamba-2 size as retention) against the chunkwise torch backend in float64
    (itself checked against the reference in tests/ops/test_linear_attention.py)."""
    _check(_inputs(4, length, 24, 128, 64, device="cuda"), dtype, tol, chunk_size=64, reference="torch")


@pytest.mark.gpu
def test_real_size_against_reference_on_gpu(compiled):
    _check(_inputs(1, 2048, 24, 128, 64, device="cuda"), torch.float32, 1e-4, chunk_size=64)


@pytest.mark.triton
def test_benchmark_cases_agree(interpreter):
    """benchmarks/gpu_cases/linear_attention.py: its tiny cases give the same outputs and gradients through triton
    and torch."""
    from benchmarks.gpu_cases.linear_attention import cases

    for case in cases("tiny"):
        results = {}
        for name in ("triton", "torch"):
            inputs = case["inputs"]("cpu", torch.float32)
            y, h = case["run"][name](**inputs)
            (y.sum() + h.sum()).backward()
            results[name] = [y, h] + [t.grad for t in inputs.values()]
        for got, want in zip(results["triton"], results["torch"]):
            assert_close(got, want, atol=2e-5 * want.abs().max().item(), name=case["name"])
