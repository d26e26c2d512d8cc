"""``mamba_step``: every backend against the reference composition (outputs, both states, every gradient),
the mixer's step through it against its separate operations, and bad inputs."""

import pytest
import torch

import ssmlab
from ssmlab.ops import mamba_step
from ssmlab.ops.mamba_step import mamba_step_op
from tests.utils import assert_close

FAST = [b for b in mamba_step_op.available_backends("cpu") if b != "reference"]
NAMES = ("in_weight", "in_bias", "conv_weight", "conv_bias", "x_weight", "dt_weight", "dt_bias", "A", "D",
         "out_weight", "out_bias")


def _inputs(dtype=torch.float64, batch=2, d_model=6, inner=10, width=4, rank=3, n_state=5, seed=0, biases=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).to(dtype)  # noqa: E731
    weights = dict(in_weight=r(2 * inner, d_model), in_bias=r(2 * inner), conv_weight=r(inner, width),
                   conv_bias=r(inner), x_weight=r(rank + 2 * n_state, inner), dt_weight=r(rank, inner).T.contiguous(),
                   dt_bias=r(inner), A=-torch.rand(inner, n_state, generator=g).to(dtype) * 3, D=r(inner),
                   out_weight=r(d_model, inner), out_bias=r(d_model))
    if not biases:
        for name in ("in_bias", "conv_bias", "D", "out_bias"):
            weights[name] = None
    return (r(batch, d_model), r(batch, inner, width - 1), r(batch, inner, n_state)), weights


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("biases", [True, False])
@pytest.mark.parametrize("width", [1, 4])
def test_matches_the_reference(backend, biases, width):
    (x, conv, ssm), weights = _inputs(biases=biases, width=width)
    before = conv.clone(), ssm.clone()
    want = mamba_step(x, conv, ssm, **weights, backend="reference")
    got = mamba_step(x, conv, ssm, **weights, backend=backend)
    for name, a, b in zip(("out", "conv state", "ssm state"), got, want):
        assert_close(a, b, atol=1e-12, name=f"{name} ({backend})")
    assert torch.equal(conv, before[0]) and torch.equal(ssm, before[1]), "a state passed in was changed"


@pytest.mark.parametrize("backend", FAST)
def test_float32(backend):
    (x, conv, ssm), weights = _inputs(torch.float32, inner=64, n_state=16, d_model=32)
    want = mamba_step(x.double(), conv.double(), ssm.double(), **{k: v.double() for k, v in weights.items()},
                      backend="reference")
    got = mamba_step(x, conv, ssm, **weights, backend=backend)
    for name, a, b in zip(("out", "conv state", "ssm state"), got, want):
        assert a.dtype == torch.float32
        assert_close(a, b, atol=1e-5, rtol=1e-5, name=f"float32 {name} ({backend})")


@pytest.mark.parametrize("backend", FAST)
def test_gradients_match_the_reference(backend):
    (x, conv, ssm), weights = _inputs()
    leaves = [t.requires_grad_() for t in (x, conv, ssm, *weights.values())]

    def run(name):
        outs = mamba_step(*leaves[:3], **dict(zip(NAMES, leaves[3:])), backend=name)
        loss = sum((t * t.detach().cos()).sum() for t in outs)
        return torch.autograd.grad(loss, leaves)

    for i, (got, want) in enumerate(zip(run(backend), run("reference"))):
        assert_close(got, want, atol=1e-12, name=f"gradient of input {i} ({backend})")


def test_the_mixer_step_through_the_op_matches_its_separate_operations(monkeypatch):
    """Mamba's step (through ``mamba_step``) against the same mixer with its projections wrapped in a subclass of
    nn.Linear, which makes it take its separate-operations path, over several positions."""
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("mamba", 16, dtype=torch.float64)
    calls = []
    default = "numba" if "numba" in FAST else "torch"
    fn = mamba_step_op.resolve(default)
    monkeypatch.setattr(mamba_step_op.backends[default], "fn", lambda *a: calls.append(1) or fn(*a))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        state, fused = mixer.init_state(2), []
        for t in range(5):
            y, state = mixer.step(x[:, t], state)
            fused.append(y)
        plain = type("PlainLinear", (torch.nn.Linear,), {})
        for name in ("in_proj", "x_proj", "out_proj"):
            getattr(mixer, name).__class__ = plain
        state2, separate = mixer.init_state(2), []
        for t in range(5):
            y, state2 = mixer.step(x[:, t], state2)
            separate.append(y)
    assert len(calls) == 5
    assert_close(torch.stack(fused), torch.stack(separate), atol=1e-12, name="mixer step: op vs separate")
    for key in state:
        assert_close(state[key], state2[key], atol=1e-12, name=f"state {key}")


def test_bad_inputs_are_one_line_errors():
    (x, conv, ssm), weights = _inputs()
    for name, bad, message in (("x_weight", weights["x_weight"][1:], "x_weight"),
                               ("A", weights["A"][:, :2], "ssm_state"),
                               ("dt_bias", None, "dt_bias")):
        with pytest.raises(ValueError, match=message) as info:
            mamba_step(x, conv, ssm, **{**weights, name: bad})
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_serial_and_parallel_builds(threads):
    """With two torch threads the numba backend runs its parallel build (projections split across threads)."""
    if "numba" not in FAST:
        pytest.skip("Numba is not installed")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (x, conv, ssm), weights = _inputs(inner=70, d_model=33)
        want = mamba_step(x, conv, ssm, **weights, backend="reference")
        got = mamba_step(x, conv, ssm, **weights, backend="numba")
    finally:
        torch.set_num_threads(old)
    for name, a, b in zip(("out", "conv state", "ssm state"), got, want):
        assert_close(a, b, atol=1e-12, name=f"{name}, {threads} threads")


@pytest.mark.parametrize("backend", FAST)
def test_int8_projections(backend):
    """int8 in, x and out projections with a scale per row against the reference on the dequantised weights."""
    (x, conv, ssm), weights = _inputs(torch.float32, inner=32, d_model=16)
    g = torch.Generator().manual_seed(3)
    for name in ("in", "x", "out"):
        rows, cols = weights[f"{name}_weight"].shape
        weights[f"{name}_weight"] = torch.randint(-127, 128, (rows, cols), generator=g, dtype=torch.int8)
        weights[f"{name}_scale"] = torch.rand(rows, generator=g) * 0.01
    dense = {k: v for k, v in weights.items() if not k.endswith("_scale")}
    for name in ("in", "x", "out"):
        dense[f"{name}_weight"] = weights[f"{name}_weight"].float() * weights[f"{name}_scale"][:, None]
    want = mamba_step(x, conv, ssm, **dense, backend="reference")
    got = mamba_step(x, conv, ssm, **weights, backend=backend)
    for name, a, b in zip(("out", "conv state", "ssm state"), got, want):
        assert_close(a, b, atol=1e-5, rtol=1e-5, name=f"int8 {name} ({backend})")
    with pytest.raises(ValueError, match="in_weight must be int8 exactly when in_scale is given"):
        mamba_step(x, conv, ssm, **{**weights, "in_scale": None})
