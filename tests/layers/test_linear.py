"""``project``: ``ops.matvec`` for the few rows of a generated position, ``layer(x)`` for everything else."""

import pytest
import torch
from torch import nn

from ssmlab.layers.linear import MIN_WEIGHT, project
from ssmlab.ops.matvec import matvec_op
from tests.utils import assert_close


def _spy(monkeypatch):
    """The shapes of x in every call of a ``matvec`` backend."""
    calls = []
    for name in matvec_op.available_backends("cpu"):
        fn = matvec_op.resolve(name)
        monkeypatch.setattr(matvec_op.backends[name], "fn", lambda *a, _fn=fn: calls.append(a[0].shape) or _fn(*a))
    return calls


def test_generation_rows_go_to_matvec(monkeypatch):
    calls = _spy(monkeypatch)
    layer = nn.Linear(512, MIN_WEIGHT // 512 + 1)
    x = torch.randn(2, 1, 512)
    with torch.no_grad():
        y = project(layer, x)
        assert_close(y, layer(x), atol=1e-4, rtol=1e-5, name="project")
    assert calls == [(2, 512)] and y.shape == (2, 1, layer.out_features)


@pytest.mark.parametrize("case", ["grad", "small", "many rows", "float16", "subclass"])
def test_everything_else_goes_to_the_layer(monkeypatch, case):
    calls = _spy(monkeypatch)
    layer = nn.Linear(512, 8 if case == "small" else MIN_WEIGHT // 512 + 1)
    if case == "subclass":
        layer = type("MyLinear", (nn.Linear,), {})(512, MIN_WEIGHT // 512 + 1)
    x = torch.randn(64 if case == "many rows" else 1, 512)
    if case == "float16":
        layer, x = layer.half(), x.half()
    with torch.set_grad_enabled(case == "grad"):
        y = project(layer, x)
    assert calls == []
    assert torch.equal(y, layer(x))


def test_int8_linear_quantises_each_row_and_computes_with_the_dequantised_weight():
    from ssmlab.layers.linear import Int8Linear

    torch.manual_seed(0)
    layer = nn.Linear(48, 20)
    layer.weight.data[3] *= 100  # one row much larger: per-row scales keep the others' precision
    q = Int8Linear.from_linear(layer)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    err = (q.dequantized() - layer.weight.detach()).abs()
    row_max = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    assert (err <= row_max / 254 * (1 + 1e-5)).all(), "an error above half a step of its own row's scale"
    with torch.no_grad():
        for rows in (1, 40):  # one generated position (ops.matvec) and a sequence (dequantised F.linear)
            x = torch.randn(rows, 48)
            assert_close(q(x), torch.nn.functional.linear(x, q.dequantized(), layer.bias), atol=1e-5, rtol=1e-5,
                         name=f"{rows} rows")


def test_quantize_int8_replaces_plain_linear_layers_but_skipped_names():
    import ssmlab
    from ssmlab.layers.linear import Int8Linear, quantize_int8

    torch.manual_seed(0)
    model = ssmlab.create_model("mamba", d_model=32, n_layers=2, vocab_size=50, mlp=False).eval()
    q = quantize_int8(model)
    kinds = {name: type(m) for name, m in q.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    assert all(kind is (nn.Linear if name.endswith("dt_proj") else Int8Linear) for name, kind in kinds.items())
    assert not any(isinstance(m, Int8Linear) for m in model.modules()), "the original was changed"
    tokens = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        ref, got = model(tokens), q(tokens)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
