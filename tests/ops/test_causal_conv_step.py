"""``causal_conv_step``'s backends against the reference step: outputs, new states, every gradient, no mutation."""

import pytest
import torch

from ssmlab.ops import causal_conv_step
from ssmlab.ops.causal_conv import causal_conv_step_op
from tests.utils import assert_close

FAST = [b for b in causal_conv_step_op.available_backends("cpu") if b not in ("reference", "torch")]


def _inputs(width, dtype=torch.float64, batch=3, channels=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 3).to(dtype)  # noqa: E731
    return r(batch, channels), r(channels, width), r(batch, channels, width - 1), r(channels)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_step_matches_the_reference(backend, width, bias, activation, dtype, atol):
    x, w, state, b = _inputs(width, dtype)
    before = state.clone()
    want = causal_conv_step(x, w, state, b if bias else None, activation=activation, backend="reference")
    got = causal_conv_step(x, w, state, b if bias else None, activation=activation, backend=backend)
    for name, a, e in zip(("y", "state"), got, want):
        assert a.dtype == e.dtype
        assert_close(a, e, atol=atol, rtol=atol, name=f"{name} ({backend})")
    assert torch.equal(state, before), "the state passed in was changed"


@pytest.mark.parametrize("backend", FAST)
def test_step_gradients_match_the_reference(backend):
    leaves = [t.requires_grad_() for t in _inputs(4)]

    def run(name):
        y, s = causal_conv_step(leaves[0], leaves[1], leaves[2], leaves[3], activation="silu", backend=name)
        return torch.autograd.grad((y * y.detach().cos()).sum() + (s * s.detach().sin()).sum(), leaves)

    for i, (got, want) in enumerate(zip(run(backend), run("reference"))):
        assert_close(got, want, atol=1e-12, name=f"gradient of input {i} ({backend})")


def test_numba_step_is_the_cpu_default_when_installed():
    pytest.importorskip("numba")
    from ssmlab.ops.causal_conv.numba_step import causal_conv_step_numba
    assert causal_conv_step_op.resolve(None, "cpu") is causal_conv_step_numba
