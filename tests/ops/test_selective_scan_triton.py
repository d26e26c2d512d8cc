"""The triton backend of ``selective_scan`` against the reference: on the CPU through Triton's interpreter
(small shapes, float32 against the float64 reference), and on a GPU at Mamba-1.3B's layer size."""


import pytest
import torch

from ssmlab.ops import selective_scan
from ssmlab.ops.selective_scan import selective_scan_op
from tests.ops.test_selective_scan import _inputs
from tests.triton_utils import use_triton
from tests.utils import assert_close

pytest.importorskip("triton")

MODULES = ("ssmlab.ops.selective_scan.triton",)


@pytest.fixture
def interpreter(monkeypatch):
    use_triton(monkeypatch, selective_scan_op, MODULES, interpret=True)


def _run(backend, args, kwargs, dtype, requires_grad=True):
    leaves = [a.detach().to(dtype).clone().requires_grad_(requires_grad) for a in args]
    kw = {k: v.detach().to(dtype).clone().requires_grad_(requires_grad) if isinstance(v, torch.Tensor) else v
          for k, v in kwargs.items()}
    y, h = selective_scan(*leaves, **kw, return_final_state=True, backend=backend)
    return y, h, leaves + [v for v in kw.values() if isinstance(v, torch.Tensor)]


def _check(args, kwargs, dtype, tol, loss=lambda y, h: y.sin().sum() + h.square().sum()):
    """Outputs, final state and every input gradient of the triton backend (inputs in ``dtype``)
    against the float64 reference, within ``tol`` of each quantity's largest value."""
    names = ["u", "delta", "A", "B", "C"] + [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    results = {}
    for backend, dt in (("reference", torch.float64), ("triton", dtype)):
        y, h, leaves = _run(backend, args, kwargs, dt)
        loss(y.double(), h.double()).backward()
        results[backend] = [y, h] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]
    assert results["triton"][0].dtype == dtype
    for label, got, want in zip(["y", "final state"] + [f"grad {n}" for n in names], results["triton"],
                                results["reference"]):
        scale = want.abs().max().item()
        assert_close(got.double(), want, atol=tol * (1 + scale), rtol=tol, name=label)


# (groups, options, length): each option of the op, B and C flat or grouped, lengths around the chunk of 16.
CASES = [(None, "all", 37), (2, "all", 33), (1, "bias", 16), (2, "no_state", 1), (None, "z", 18)]


@pytest.mark.triton
@pytest.mark.parametrize("groups, options, length", CASES)
def test_triton_matches_reference(interpreter, groups, options, length):
    args, kwargs = _inputs(length, groups, batch=1, channels=4, n_state=3, options=options)
    _check(args, kwargs, torch.float32, 1e-4)


@pytest.mark.triton
def test_triton_float64_is_exact(interpreter):
    """With float64 inputs the kernels compute in float64: the reference's figures to rounding."""
    args, kwargs = _inputs(21, 2, batch=2, channels=4, n_state=5, options="all")
    _check(args, kwargs, torch.float64, 1e-11)


@pytest.mark.triton
@pytest.mark.parametrize("used", ["y", "final_state"])
def test_triton_one_output_unused(interpreter, used):
    args, kwargs = _inputs(17, 2, batch=1, options="all")
    _check(args, kwargs, torch.float64, 1e-11, loss=lambda y, h: y.sum() if used == "y" else h.sum())


@pytest.mark.triton
def test_triton_mixed_precision_and_inference(interpreter):
    """bfloat16 activations with float32 A, D and bias: y in bfloat16, the state and the computation in
    float32, each gradient in its input's dtype; without autograd nothing is kept and y is the same."""
    args, kwargs = _inputs(20, 2, batch=1, options="all")
    low = [a.to(torch.bfloat16) for a in args[:2]] + [args[2].float()] + [a.to(torch.bfloat16) for a in args[3:]]
    kw = {k: (v.to(torch.bfloat16) if k == "z" else v.float()) if isinstance(v, torch.Tensor) else v
          for k, v in kwargs.items()}
    leaves = [t.clone().requires_grad_(True) for t in low]
    kw_leaves = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    y, h = selective_scan(*leaves, **kw_leaves, return_final_state=True, backend="triton")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want = selective_scan(*[t.double() for t in low],
                          **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
                          backend="reference")
    assert_close(y.double(), want, atol=1e-2 * want.abs().max().item(), name="bfloat16 y")
    (y.float().sum() + h.sum()).backward()
    for t in leaves + [v for v in kw_leaves.values() if isinstance(v, torch.Tensor)]:
        assert t.grad is not None and t.grad.dtype == t.dtype and torch.isfinite(t.grad.float()).all()
    with torch.no_grad():
        y2 = selective_scan(*low, **kw, backend="triton")
    assert torch.equal(y2, y.detach())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [2048, 8192])
def test_triton_gpu_mamba_layer_size(dtype, length, monkeypatch):
    """Mamba-1.3B's layer (B=4, D=1536, N=16) on the GPU against the reference, gradients included."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    batch, channels, n_state = 4, 1536, 16
    args, kwargs = _inputs(length, None, batch, channels, n_state, dtype=torch.float32, options="all")
    args = [a.cuda() for a in args]
    kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    args = [a.to(dtype) if i in (0, 1, 3, 4) else a for i, a in enumerate(args)]
    kwargs["z"] = kwargs["z"].to(dtype)
    results = {}
    for backend in ("reference", "triton"):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        kw = {k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
        y, h = selective_scan(*leaves, **kw, return_final_state=True, backend=backend)
        (y.float().sin().sum() + h.square().sum()).backward()
        results[backend] = [y, h] + [t.grad for t in leaves] + [v.grad for v in kw.values()
                                                                 if isinstance(v, torch.Tensor)]
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    for i, (got, want) in enumerate(zip(results["triton"], results["reference"])):
        scale = want.float().abs().max().item()
        assert_close(got.float(), want.float(), atol=tol * scale, rtol=tol, name=f"quantity {i}")
