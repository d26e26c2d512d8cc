"""Backend selection: argument, then environment variable, then the best available; never a silent fallback."""

import pytest
import torch

from ssmlab import ops
from ssmlab.ops import BackendUnavailableError, Op
from ssmlab.ops.fftconv import fft_conv_op
from ssmlab.ops.scan import linear_scan_op
from ssmlab.ops.selective_scan import selective_scan_op
from ssmlab.ops.ssd import ssd_op

ALL_OPS = [fft_conv_op, linear_scan_op, selective_scan_op, ssd_op]


def _toy():
    op = Op("toy")
    op.register("reference", priority=0)(lambda: "reference")
    op.register("fast", priority=10)(lambda: "fast")
    op.register("gpu", priority=20, available=lambda device: device.type == "cuda")(lambda: "gpu")
    return op


def test_choice_order(monkeypatch):
    monkeypatch.delenv("SSMLAB_TOY_BACKEND", raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    op = _toy()
    assert op.resolve()() == "fast"  # best available on CPU; gpu is not available
    assert op.resolve("reference")() == "reference"
    monkeypatch.setenv("SSMLAB_BACKEND", "reference")
    assert op.resolve()() == "reference"
    monkeypatch.setenv("SSMLAB_TOY_BACKEND", "fast")
    assert op.resolve()() == "fast"  # the op's own variable wins over the global one
    assert op.resolve("reference")() == "reference"  # the argument wins over both


def test_missing_or_unavailable_backend_is_an_error(monkeypatch):
    op = _toy()
    with pytest.raises(BackendUnavailableError, match="no backend named 'triton'.*fast, gpu, reference"):
        op.resolve("triton")
    with pytest.raises(BackendUnavailableError, match="'gpu' is not available for device cpu"):
        op.resolve("gpu")
    monkeypatch.setenv("SSMLAB_TOY_BACKEND", "nope")
    with pytest.raises(BackendUnavailableError, match="no backend named 'nope'"):
        op.resolve()


def test_lazy_backend_loads_on_first_use():
    op = _toy()
    calls = []
    op.register_lazy("lazy", lambda: calls.append(1) or (lambda: "lazy"), priority=-1)
    assert calls == []
    assert op.resolve("lazy")() == "lazy" and op.resolve("lazy")() == "lazy"
    assert calls == [1]


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.name)
def test_every_op_has_a_reference_and_a_fast_path(op):
    available = op.available_backends("cpu")
    assert "reference" in available and len(available) >= 2
    best = max((op.backends[b] for b in available), key=lambda b: b.priority)
    assert best.name != "reference"


def test_env_var_reaches_the_public_function(monkeypatch):
    calls = []
    original = ssd_op.backends["reference"].fn
    monkeypatch.setattr(ssd_op.backends["reference"], "fn", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setenv("SSMLAB_SSD_BACKEND", "reference")
    x = torch.randn(1, 3, 2, 2)
    ops.ssd(x, torch.rand(1, 3, 2), -torch.ones(2), torch.randn(1, 3, 1, 2), torch.randn(1, 3, 1, 2))
    assert calls == [1]
    monkeypatch.setenv("SSMLAB_SSD_BACKEND", "missing")
    with pytest.raises(BackendUnavailableError, match="ssd: no backend named 'missing'"):
        ops.ssd(x, torch.rand(1, 3, 2), -torch.ones(2), torch.randn(1, 3, 1, 2), torch.randn(1, 3, 1, 2))
