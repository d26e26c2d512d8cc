"""The triton backend of ``gated_delta_rule`` against the reference: on the CPU through the interpreter, on a GPU."""


import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import gated_delta_rule
from ssmlab.ops.gated_delta_rule import gated_delta_rule_op
from tests.triton_utils import use_triton
from tests.utils import assert_close

pytest.importorskip("triton")

MODULES = ("ssmlab.ops.gated_delta_rule.triton",)


@pytest.fixture
def interpreted(monkeypatch):
    use_triton(monkeypatch, gated_delta_rule_op, MODULES, interpret=True)


@pytest.fixture
def compiled(monkeypatch):
    use_triton(monkeypatch, gated_delta_rule_op, MODULES, interpret=False)


def _inputs(batch, length, heads, key_dim, value_dim, seed=0, device="cpu"):
    """q, unit-length k, v, beta in (0, 1), log_alpha < 0 and an initial state, float64."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=device)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), r(batch, length, heads, key_dim), r(batch, length, heads, value_dim)
    beta, log_alpha = torch.sigmoid(r(batch, length, heads)), F.logsigmoid(2 * r(batch, length, heads) + 2)
    return q, F.normalize(k, dim=-1), v, beta, log_alpha, r(batch, heads, key_dim, value_dim)


def _run_both(tensors, dtype, gated=True, with_state=True, scale=None):
    """Outputs, final state and every input gradient of the reference (float64) and the triton backend: q, k, v in
    ``dtype`` (the reference gets the same rounded values), beta, log_alpha and the initial state in float32."""
    names = ["q", "k", "v", "beta", "log_alpha", "initial_state"]
    rounded = dict(zip(names, (t.to(dtype if i < 3 else torch.float32) for i, t in enumerate(tensors))))
    if not gated:
        del rounded["log_alpha"]
    if not with_state:
        del rounded["initial_state"]
    results = {}
    for backend in ("reference", "triton"):
        x = {n: (t.double() if backend == "reference" else t).detach().requires_grad_(True) for n, t in rounded.items()}
        o, state = gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], log_alpha=x.get("log_alpha"),
                                    initial_state=x.get("initial_state"), scale=scale, return_final_state=True,
                                    backend=backend)
        (o.to(state.dtype).sin().sum() + state.square().sum()).backward()
        results[backend] = dict(o=o, state=state, **{f"grad {n}": t.grad for n, t in x.items()})
    return results["triton"], results["reference"]


def _check(got, want, rtol):
    """Every value within ``rtol`` times the largest magnitude of the reference's."""
    assert got["state"].dtype == torch.float32
    for name, value in want.items():
        assert_close(got[name].double(), value, atol=rtol * value.abs().max().item(), name=name)


@pytest.mark.parametrize("length, key_dim, value_dim, gated, with_state", [(70, 5, 6, True, True),
                                                                          (20, 3, 17, False, False)])
def test_matches_reference(interpreted, length, key_dim, value_dim, gated, with_state):
    """L not a multiple of the chunk (64); K and V not powers of two; DeltaNet (no gate) without an initial state."""
    got, want = _run_both(_inputs(1, length, 2, key_dim, value_dim), torch.float32, gated, with_state)
    _check(got, want, 2e-5)


def test_several_chunks_and_blocks(interpreted):
    """Three chunks, K = 70 (one block of 128), V = 80 (two blocks of 64), two sequences, another scale."""
    got, want = _run_both(_inputs(2, 130, 1, 70, 80, seed=1), torch.float32, scale=0.5)
    _check(got, want, 2e-5)


def test_bfloat16(interpreted):
    """bf16 q, k, v with float32 beta, log_alpha and state: o and the gradients in the inputs' dtypes."""
    got, want = _run_both(_inputs(1, 40, 1, 16, 16), torch.bfloat16)
    assert got["o"].dtype == got["grad q"].dtype == got["grad v"].dtype == torch.bfloat16
    assert got["grad beta"].dtype == got["grad log_alpha"].dtype == got["grad initial_state"].dtype == torch.float32
    _check(got, want, 3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length, heads, dim", [(2048, 24, 64), (2048, 16, 128)])
def test_real_sizes_on_gpu(compiled, dtype, length, heads, dim):
    got, want = _run_both(_inputs(4, length, heads, dim, dim, device="cuda"), dtype)
    _check(got, want, 5e-3 if dtype == torch.float32 else 5e-2)
