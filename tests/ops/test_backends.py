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


# One tiny valid call of each op's public function, by op name; keywords (backend=) are passed on.
CALLS = {
    "fft_conv": lambda **kw: ops.fft_conv(torch.randn(1, 5, 2), torch.randn(2, 5), **kw),
    "linear_scan": lambda **kw: ops.linear_scan(torch.rand(1, 5, 2), torch.randn(1, 5, 2), **kw),
    "selective_scan": lambda **kw: ops.selective_scan(torch.randn(1, 5, 2), torch.rand(1, 5, 2), -torch.rand(2, 3),
                                                      torch.randn(1, 5, 3), torch.randn(1, 5, 3), **kw),
    "ssd": lambda **kw: ops.ssd(torch.randn(1, 5, 2, 2), torch.rand(1, 5, 2), -torch.ones(2),
                                torch.randn(1, 5, 1, 3), torch.randn(1, 5, 1, 3), **kw),
}
BACKENDS = [(op, name) for op in ALL_OPS for name in op.available_backends("cpu")]


def _clear_env(monkeypatch, op):
    monkeypatch.delenv(op.env_var, raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)


def _record_calls(monkeypatch, op):
    """Wrap every CPU backend of ``op`` so the names of the backends that ran are appended to the returned list."""
    calls = []
    for name in op.available_backends("cpu"):
        fn = op.resolve(name)
        monkeypatch.setattr(op.backends[name], "fn",
                            lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    return calls


def test_every_op_has_a_call():
    assert sorted(CALLS) == sorted(op.name for op in ALL_OPS)


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.name)
def test_every_op_has_a_reference_and_a_fast_path(op, monkeypatch):
    _clear_env(monkeypatch, op)
    available = op.available_backends("cpu")
    assert "reference" in available and len(available) >= 2, available
    best = max((op.backends[b] for b in available), key=lambda b: b.priority)
    assert best.name != "reference"
    calls = _record_calls(monkeypatch, op)
    CALLS[op.name]()
    assert calls == [best.name]


@pytest.mark.parametrize("op, name", BACKENDS, ids=lambda v: v if isinstance(v, str) else v.name)
def test_env_var_selects_each_backend(op, name, monkeypatch):
    _clear_env(monkeypatch, op)
    calls = _record_calls(monkeypatch, op)
    monkeypatch.setenv("SSMLAB_BACKEND", name)
    CALLS[op.name]()
    monkeypatch.setenv(op.env_var, name)
    monkeypatch.setenv("SSMLAB_BACKEND", "missing")  # the op's own variable wins over the global one
    CALLS[op.name]()
    assert calls == [name, name]


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.name)
def test_argument_beats_env_var_and_missing_names_raise(op, monkeypatch):
    _clear_env(monkeypatch, op)
    calls = _record_calls(monkeypatch, op)
    monkeypatch.setenv(op.env_var, "missing")
    with pytest.raises(BackendUnavailableError, match=f"{op.name}: no backend named 'missing'"):
        CALLS[op.name]()
    assert calls == []
    CALLS[op.name](backend="reference")
    assert calls == ["reference"]
    with pytest.raises(BackendUnavailableError, match=f"{op.name}: no backend named 'nope'; registered backends"):
        CALLS[op.name](backend="nope")
