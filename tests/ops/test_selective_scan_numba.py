"""The Numba backend of the selective scan: the default on the CPU where Numba is installed, the ``torch`` backend
where it is not or under ``torch.compile``, and its float32 exponential. Its agreement with the reference (outputs,
states, every gradient) is checked with the other backends in test_selective_scan.py."""

import numpy as np
import pytest
import torch

from ssmlab.ops import _dispatch, selective_scan
from ssmlab.ops.selective_scan import selective_scan_op
from ssmlab.ops.selective_scan.numba import default_chunk, selective_scan_numba
from ssmlab.ops.selective_scan.torch import selective_scan_chunked
from tests.ops.test_selective_scan import _inputs
from tests.utils import assert_close

pytest.importorskip("numba")


def test_numba_is_the_cpu_default_when_installed():
    assert selective_scan_op.resolve(None, "cpu") is selective_scan_numba


def test_torch_serves_without_numba(monkeypatch):
    monkeypatch.setattr(_dispatch, "numba_installed", lambda: False)
    assert "numba" not in selective_scan_op.available_backends("cpu")
    assert selective_scan_op.resolve(None, "cpu") is selective_scan_chunked


def test_fast_exponential():
    """float32 kernels use a polynomial: within 2.5e-7 relative of exp over [-87, 88], 0 below -88, infinity above 89."""
    from ssmlab.ops.selective_scan import _numba_kernels as kernels

    x = np.concatenate([np.linspace(-87.0, 88.0, 200001), [-88.5, -100.0, -1e30, 0.0, 89.0]]).astype(np.float32)
    out = np.empty_like(x)
    bits = np.empty(x.shape[0], dtype=np.int32)
    kernels.decays_into(x[None], np.ones((1, 1, x.shape[0]), np.float32), out[None, None], bits[None, None],
                        bits.view(np.float32)[None, None], kernels.constants(np.float32))
    want = np.exp(x[:200001].astype(np.float64))
    assert np.max(np.abs(out[:200001] - want) / want) < 2.5e-7
    assert list(out[200001:]) == [0.0, 0.0, 0.0, 1.0, np.inf]


def test_fast_softplus_and_silu():
    """float32 kernels compute the step's softplus and the gate's silu with the polynomial exponential: values and
    slopes (sigmoids) within 4e-7 of their scale over [-30, 30], and softplus(x) = x above 20, as torch's."""
    from ssmlab.ops.selective_scan import _numba_kernels as kernels

    x = np.linspace(-30.0, 30.0, 60001).astype(np.float32)
    k = kernels.constants(np.float32)
    out, slope, work = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    bits = np.empty(x.shape[0], dtype=np.int32)
    xd = x.astype(np.float64)
    sigmoid = 1 / (1 + np.exp(-xd))
    softplus = np.where(xd > 20, xd, np.log1p(np.exp(xd)))
    kernels.softplus_into(x, out, slope, work, bits, bits.view(np.float32), k)
    assert np.max(np.abs(out - softplus) / np.maximum(softplus, 1.0)) < 4e-7
    assert np.max(np.abs(slope - sigmoid)) < 4e-7
    assert np.array_equal(out[x > 20], x[x > 20])
    kernels.silu_into(x, out, slope, bits, bits.view(np.float32), k)
    assert np.max(np.abs(out - xd * sigmoid) / np.maximum(np.abs(xd), 1.0)) < 4e-7
    assert np.max(np.abs(slope - sigmoid)) < 4e-7


@pytest.mark.parametrize("groups", [None, 2])
def test_float32_over_several_chunks_matches_reference(groups):
    """float32 through the polynomial exponential, L = 150 over chunks of 64, against the float64 reference:
    outputs, final state and every gradient within 1e-4 of their scale."""
    length, channels, n_state = 150, 8, 4
    assert default_chunk(n_state, channels) < length
    args, kwargs = _inputs(length, groups, channels=channels, n_state=n_state)
    grads = {}
    for name, dtype in (("reference", torch.float64), ("numba", torch.float32)):
        leaves = [a.detach().to(dtype).requires_grad_(True) for a in args]
        kw = {k: v.detach().to(dtype).requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        y, h = selective_scan(*leaves, **kw, return_final_state=True, backend=name)
        (y.sin().sum() + h.square().sum()).backward()
        tensors = leaves + [v for v in kw.values() if isinstance(v, torch.Tensor)]
        grads[name] = [y, h] + [t.grad for t in tensors]
    assert grads["numba"][0].dtype == torch.float32
    for i, (got, want) in enumerate(zip(grads["numba"], grads["reference"])):
        assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name=f"output {i}")


def test_compiled_graph_runs_the_torch_backend():
    """Under torch.compile the Numba backend runs the ``torch`` one, so fullgraph capture works."""
    args, kwargs = _inputs(20)
    compiled = torch.compile(lambda *a: selective_scan(*a, **kwargs, backend="numba"), fullgraph=True, backend="eager")
    assert_close(compiled(*args), selective_scan(*args, **kwargs, backend="reference"), atol=1e-11, name="y")
