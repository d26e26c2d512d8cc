"""The Numba backend of the causal convolution: the default on the CPU where Numba is installed, the ``torch``
backend where it is not, and float32 (its SiLU uses the selective scan's polynomial exponential) and strided inputs
against the reference. Its float64 agreement with the reference (outputs, states, every gradient) is checked with
the other backends in test_causal_conv.py."""

import pytest
import torch

from ssmlab.ops import _dispatch, causal_conv
from ssmlab.ops.causal_conv import causal_conv_op
from ssmlab.ops.causal_conv.numba import causal_conv_numba
from ssmlab.ops.causal_conv.torch import causal_conv_torch
from tests.utils import assert_close

pytest.importorskip("numba")


def test_numba_is_the_cpu_default_when_installed():
    assert causal_conv_op.resolve(None, "cpu") is causal_conv_numba


def test_torch_serves_without_numba(monkeypatch):
    monkeypatch.setattr(_dispatch, "numba_installed", lambda: False)
    assert "numba" not in causal_conv_op.available_backends("cpu")
    assert causal_conv_op.resolve(None, "cpu") is causal_conv_torch


def _run(backend, x, weight, bias, h0, dtype):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, weight, bias, h0)]
    # A strided view, as Mamba's convolution reads half of its input projection.
    xs = torch.cat([leaves[0], torch.zeros_like(leaves[0])], -1)[..., :x.shape[-1]]
    y, state = causal_conv(xs, *leaves[1:3], activation="silu", initial_state=leaves[3], return_final_state=True,
                           backend=backend)
    (y.sin().sum() + state.square().sum()).backward()
    return [y, state] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_strided_input_matches_reference(dtype, tol):
    """A strided x, L = 70, K = 4, SiLU: outputs, final state and every gradient within ``tol`` of their scale of
    the float64 reference."""
    g = torch.Generator().manual_seed(0)
    x, weight, bias, h0 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 70, 24), (24, 4), (24,),
                                                                                         (2, 24, 3)))
    want = _run("reference", x, weight, bias, h0, torch.float64)
    got = _run("numba", x, weight, bias, h0, dtype)
    assert got[0].dtype == dtype
    for name, a, b in zip(["y", "state", "grad x", "grad weight", "grad bias", "grad state"], got, want):
        assert_close(a.double(), b, atol=tol * b.abs().max().item(), name=name)
