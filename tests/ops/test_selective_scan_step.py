"""``selective_scan_step``'s backends against the reference step: outputs, new states, every gradient, no mutation."""

import pytest
import torch

from ssmlab.ops import selective_scan_step
from ssmlab.ops.selective_scan import selective_scan_step_op
from tests.utils import assert_close

FAST = [b for b in selective_scan_step_op.available_backends("cpu") if b not in ("reference", "triton")]
KEYS = ("D", "z", "delta_bias")


def _step_inputs(groups, dtype=torch.float64, batch=3, channels=8, n_state=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    bc = (batch, n_state) if groups is None else (batch, groups, n_state)
    args = [r(batch, channels), r(batch, channels) * scale, -torch.rand(channels, n_state, generator=g).to(dtype) * 3,
            r(*bc), r(*bc), r(batch, channels, n_state)]
    return args, {"D": r(channels), "z": r(batch, channels), "delta_bias": r(channels)}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("options", ["none", "softplus", "all"])
def test_step_matches_the_reference(backend, groups, options):
    args, extra = _step_inputs(groups)
    kwargs = {} if options == "none" else {"delta_softplus": True}
    if options == "all":
        kwargs.update(extra)
    else:
        args[1] = args[1].abs()  # without softplus the reference's step sizes must stay positive to be a decay
    state = args[5].clone()
    want_y, want_h = selective_scan_step(*args, **kwargs, backend="reference")
    y, h = selective_scan_step(*args, **kwargs, backend=backend)
    assert_close(y, want_y, atol=1e-12, name=f"y ({backend})")
    assert_close(h, want_h, atol=1e-12, name=f"new state ({backend})")
    assert torch.equal(args[5], state), "the state passed in was changed"


@pytest.mark.parametrize("backend", FAST)
def test_step_float32_large_and_small_step_sizes(backend):
    """float32 with step sizes from 1e-4 to 1e2 (decays from ~1 to 0, through the exponential's clamp)."""
    args, extra = _step_inputs(2, dtype=torch.float32, channels=64, n_state=16, scale=6.0)
    want = selective_scan_step(*[a.double() for a in args], **{k: v.double() for k, v in extra.items()},
                               delta_softplus=True, backend="reference")
    got = selective_scan_step(*args, **extra, delta_softplus=True, backend=backend)
    for name, a, b in zip(("y", "state"), got, want):
        assert a.dtype == torch.float32
        assert_close(a, b, atol=2e-5, rtol=2e-5, name=f"float32 {name}")


@pytest.mark.parametrize("backend", FAST)
def test_step_gradients_match_the_reference(backend):
    args, extra = _step_inputs(2)
    leaves = [t.clone().requires_grad_() for t in args + [extra[k] for k in KEYS]]

    def run(name):
        y, h = selective_scan_step(*leaves[:6], **dict(zip(KEYS, leaves[6:])), delta_softplus=True, backend=name)
        return torch.autograd.grad((y * y.detach().cos()).sum() + (h * h.detach().sin()).sum(), leaves)

    for i, (got, want) in enumerate(zip(run(backend), run("reference"))):
        assert_close(got, want, atol=1e-12, name=f"gradient of input {i} ({backend})")


def test_numba_step_is_the_cpu_default_when_installed():
    pytest.importorskip("numba")
    from ssmlab.ops.selective_scan.numba_step import selective_scan_step_numba
    assert selective_scan_step_op.resolve(None, "cpu") is selective_scan_step_numba
