"""The triton backend of ``gla`` against the reference: on the CPU through Triton's interpreter, real sizes on a GPU."""


import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import gla
from ssmlab.ops.gla import gla_op
from tests.triton_utils import use_triton
from tests.utils import assert_close

pytest.importorskip("triton")

MODULES = ("ssmlab.ops.gla.triton",)


@pytest.fixture
def interpreted(monkeypatch):
    use_triton(monkeypatch, gla_op, MODULES, interpret=True)


@pytest.fixture
def compiled(monkeypatch):
    use_triton(monkeypatch, gla_op, MODULES, interpret=False)


def _inputs(batch, length, heads, key_dim, value_dim, seed=0, device="cpu"):
    """q, k, v, log_decay < 0 (log-sigmoid, as GLA's gates) and an initial state, float64."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=device)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), r(batch, length, heads, key_dim), r(batch, length, heads, value_dim)
    log_decay = F.logsigmoid(2 * r(batch, length, heads, key_dim) + 2)
    return q, k, v, log_decay, r(batch, heads, key_dim, value_dim)


def _run_both(tensors, dtype, with_state=True, scale=None):
    """Outputs, final state and every input gradient of the reference (float64) and the triton backend: q, k, v in
    ``dtype`` (the reference gets the same rounded values), log_decay and the initial state in float32."""
    names = ["q", "k", "v", "log_decay", "initial_state"][:5 if with_state else 4]
    rounded = [t.to(dtype if i < 3 else torch.float32) for i, t in enumerate(tensors[:len(names)])]
    results = {}
    for backend in ("reference", "triton"):
        x = [(t.double() if backend == "reference" else t).detach().requires_grad_(True) for t in rounded]
        o, state = gla(*x[:4], initial_state=x[4] if with_state else None, scale=scale, return_final_state=True,
                       backend=backend)
        (o.to(state.dtype).sin().sum() + state.square().sum()).backward()
        results[backend] = dict(o=o, state=state, **{f"grad {n}": t.grad for n, t in zip(names, x)})
    return results["triton"], results["reference"]


def _check(got, want, rtol):
    """Every value within ``rtol`` times the largest magnitude of the reference's."""
    assert got["state"].dtype == torch.float32
    for name, value in want.items():
        assert_close(got[name].double(), value, atol=rtol * value.abs().max().item(), name=name)


@pytest.mark.parametrize("length, key_dim, value_dim, with_state", [(70, 5, 6, True), (20, 3, 17, False)])
def test_matches_reference(interpreted, length, key_dim, value_dim, with_state):
    """L not a multiple of the chunk (64) or the sub-chunk (16); K and V not powers of two."""
    got, want = _run_both(_inputs(1, length, 2, key_dim, value_dim), torch.float32, with_state)
    _check(got, want, 2e-5)


def test_strong_decay_and_several_blocks(interpreted):
    """g = -30 on a key (exp(-G) would overflow float32 within a chunk), K = 70 and V = 80 in two blocks of 64."""
    q, k, v, log_decay, h0 = _inputs(1, 130, 1, 70, 80, seed=1)
    log_decay[..., 0] = -30.0
    log_decay[:, ::7, :, 0] = 0.0
    got, want = _run_both((q, k, v, log_decay, h0), torch.float32, scale=0.5)
    _check(got, want, 2e-5)


def test_bfloat16(interpreted):
    """bf16 q, k, v with float32 log_decay and state: o and the gradients in the inputs' dtypes, the state float32."""
    got, want = _run_both(_inputs(1, 40, 1, 16, 16), torch.bfloat16)
    assert got["o"].dtype == got["grad q"].dtype == got["grad v"].dtype == torch.bfloat16
    assert got["grad log_decay"].dtype == got["grad initial_state"].dtype == torch.float32
    _check(got, want, 3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length, heads, dim", [(2048, 24, 64), (2048, 16, 128)])
def test_real_sizes_on_gpu(compiled, dtype, length, heads, dim):
    got, want = _run_both(_inputs(4, length, heads, dim, dim, device="cuda"), dtype)
    _check(got, want, 5e-3 if dtype == torch.float32 else 5e-2)
