"""The triton backend of ``causal_conv`` against the reference: on the CPU through Triton's interpreter
(small shapes, float32 against the float64 reference), and on a GPU at Mamba's sizes."""

import importlib

import pytest
import torch

from ssmlab.ops import causal_conv
from ssmlab.ops.causal_conv import causal_conv_op
from tests.ops.test_causal_conv import _inputs
from tests.triton_utils import use_triton
from tests.utils import assert_close

pytest.importorskip("triton")

MODULES = ("ssmlab.ops.causal_conv.triton",)


@pytest.fixture
def interpreter(monkeypatch):
    use_triton(monkeypatch, causal_conv_op, MODULES, interpret=True)


def _run(backend, kw, dtype, activation, loss):
    leaves = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in kw.items() if v is not None}
    y, state = causal_conv(leaves["x"], leaves["weight"], leaves.get("bias"), activation=activation,
                           initial_state=leaves.get("initial_state"), return_final_state=True, backend=backend)
    loss(y.double(), state.double()).backward()
    return [y, state] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves.values()], list(leaves)


def _check(kw, dtype, tol, activation, loss=lambda y, h: y.sin().sum() + h.square().sum()):
    """Output, final state and every input gradient of the triton backend (inputs in ``dtype``) against
    the float64 reference, within ``tol`` of each quantity's largest value."""
    want, names = _run("reference", kw, torch.float64, activation, loss)
    got, _ = _run("triton", kw, dtype, activation, loss)
    assert got[0].dtype == got[1].dtype == dtype
    for label, g, w in zip(["y", "final state"] + [f"grad {n}" for n in names], got, want):
        assert_close(g.double(), w, atol=tol * (1 + w.abs().max().item()) if w.numel() else tol, rtol=tol,
                     name=label)


# (width, length, bias, initial state, activation): lengths across the block of positions and below K - 1.
CASES = [(4, 37, True, True, "silu"), (4, 2, True, True, "silu"), (3, 9, False, False, None),
         (4, 20, True, True, None), (1, 5, True, True, "silu")]


@pytest.mark.triton
@pytest.mark.parametrize("width, length, bias, state, activation", CASES)
def test_triton_matches_reference(interpreter, width, length, bias, state, activation):
    _check(_inputs(length, width, bias=bias, state=state), torch.float32, 1e-5, activation)


@pytest.mark.triton
@pytest.mark.parametrize("positions", [16, 32])
def test_triton_backward_split_over_programs(interpreter, monkeypatch, positions):
    """Several backward programs along the sequence, each with its partial sums of dweight and dbias."""
    monkeypatch.setattr(importlib.import_module(MODULES[0]), "BWD_POSITIONS", positions)
    _check(_inputs(37, 4, batch=1), torch.float32, 1e-5, "silu")


@pytest.mark.triton
def test_triton_float64_is_exact(interpreter):
    _check(_inputs(35, 4, batch=1, channels=130), torch.float64, 1e-12, "silu")


@pytest.mark.triton
@pytest.mark.parametrize("used", ["y", "final_state"])
def test_triton_one_output_unused(interpreter, used):
    _check(_inputs(3, 4, batch=1), torch.float64, 1e-12, "silu",
           loss=lambda y, h: y.sum() if used == "y" else h.sum())


@pytest.mark.triton
def test_triton_dtypes(interpreter):
    """bfloat16 x with a float32 weight, bias and state: y and the state in bfloat16, each gradient in its
    input's dtype."""
    kw = _inputs(6, batch=1)
    leaves = {"x": kw["x"].bfloat16(), "weight": kw["weight"].float(), "bias": kw["bias"].float(),
              "initial_state": kw["initial_state"].float()}
    leaves = {k: v.requires_grad_(True) for k, v in leaves.items()}
    y, state = causal_conv(leaves["x"], leaves["weight"], leaves["bias"], activation="silu",
                           initial_state=leaves["initial_state"], return_final_state=True, backend="triton")
    assert y.dtype == state.dtype == torch.bfloat16
    want = causal_conv(*[kw[k] for k in ("x", "weight", "bias")], activation="silu",
                       initial_state=kw["initial_state"], backend="reference")
    assert_close(y.double(), want, atol=5e-2, name="bfloat16 y")
    (y.float().sum() + state.float().sum()).backward()
    for name, t in leaves.items():
        assert t.grad is not None and t.grad.dtype == t.dtype, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [2048, 8192])
def test_triton_gpu_mamba_sizes(dtype, length, monkeypatch):
    """Mamba-1.3B's convolution (B=4, D=3072 channels, K=4) on the GPU against the reference."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kw = {k: v.cuda() for k, v in _inputs(length, 4, batch=4, channels=3072, dtype=torch.float32).items()}
    kw["x"] = kw["x"].to(dtype)
    results = {}
    for backend in ("reference", "triton"):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in kw.items()}
        y, state = causal_conv(leaves["x"], leaves["weight"], leaves["bias"], activation="silu",
                               initial_state=leaves["initial_state"], return_final_state=True, backend=backend)
        (y.float().sin().sum() + state.float().square().sum()).backward()
        results[backend] = [y, state] + [t.grad for t in leaves.values()]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for i, (got, want) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(got.float(), want.float(), atol=tol * (1 + want.float().abs().max().item()), rtol=tol,
                     name=f"quantity {i}")
