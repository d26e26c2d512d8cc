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
