"""``project``: ``ops.matvec`` for the few rows of a generated position, ``layer(x)`` for everything else."""

import pytest
import torch
from torch import nn

from ssmlab.layers import linear as linear_module
from ssmlab.layers.linear import MIN_WEIGHT, project
from tests.utils import assert_close


def _spy(monkeypatch):
    calls = []
    real = linear_module.matvec
    monkeypatch.setattr(linear_module, "matvec", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
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
