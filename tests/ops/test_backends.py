"""Backend selection: argument, then environment variable, then the best available; never a silent fallback."""

import pytest
import torch

from ssmlab import ops
from ssmlab.ops import BackendUnavailableError, Op
from ssmlab.ops._dispatch import VOCABULARY, registered_ops
from tests.utils import assert_close

ALL_OPS = registered_ops()


def _toy():
    op = Op("toy", register=False)
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


def _seeded(call):
    """``call(randn, rand, **kw)`` with float64 draws from a fixed seed, so every call sees the same input."""
    def run(**kw):
        g = torch.Generator().manual_seed(0)
        randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
        return call(randn, rand, **kw)
    return run


# One tiny valid call of each op's public function, by op name; keywords (backend=) are passed on.
CALLS = {
    "causal_conv": _seeded(lambda randn, rand, **kw: ops.causal_conv(
        randn(1, 5, 2), randn(2, 3), randn(2), activation="silu", initial_state=randn(1, 2, 2), **kw)),
    "causal_conv_step": _seeded(lambda randn, rand, **kw: torch.cat([t.flatten() for t in ops.causal_conv_step(
        randn(2, 3), randn(3, 4), randn(2, 3, 3), randn(3), activation="silu", **kw)])),
    "gated_delta_rule": _seeded(lambda randn, rand, **kw: ops.gated_delta_rule(
        randn(1, 5, 2, 3), randn(1, 5, 2, 3), randn(1, 5, 2, 4), rand(1, 5, 2), log_alpha=-rand(1, 5, 2),
        chunk_size=2, **kw)),
    "gla": _seeded(lambda randn, rand, **kw: ops.gla(
        randn(1, 5, 2, 3), randn(1, 5, 2, 3), randn(1, 5, 2, 4), -rand(1, 5, 2, 3), chunk_size=2, **kw)),
    "mamba3": _seeded(lambda randn, rand, **kw: ops.mamba3(
        randn(1, 5, 2, 3), rand(1, 5, 2), -rand(1, 5, 2), randn(1, 5, 1, 4), randn(1, 5, 1, 4), rand(1, 5, 2),
        theta=randn(1, 5, 2, 1), chunk_size=2, **kw)),
    "linear_attention": _seeded(lambda randn, rand, **kw: ops.linear_attention(
        randn(1, 5, 2, 3), randn(1, 5, 2, 3), randn(1, 5, 2, 4), log_decay=-rand(2), chunk_size=2, **kw)),
    "mlstm": _seeded(lambda randn, rand, **kw: ops.mlstm(
        randn(1, 5, 2, 3), randn(1, 5, 2, 3), randn(1, 5, 2, 4), randn(1, 5, 2), randn(1, 5, 2), chunk_size=2, **kw)),
    "rwkv7": _seeded(lambda randn, rand, **kw: ops.rwkv7(
        randn(1, 5, 2, 3), randn(1, 5, 2, 3), randn(1, 5, 2, 4), -rand(1, 5, 2, 3), -rand(1, 5, 2, 3),
        rand(1, 5, 2, 3), chunk_size=2, **kw)),
    "wkv": _seeded(lambda randn, rand, **kw: ops.wkv(randn(1, 5, 3), randn(1, 5, 3), rand(3) + 0.1, randn(3), **kw)),
    "fft_conv": _seeded(lambda randn, rand, **kw: ops.fft_conv(randn(1, 5, 2), randn(2, 5), **kw)),
    "linear_scan": _seeded(lambda randn, rand, **kw: ops.linear_scan(rand(1, 5, 2), randn(1, 5, 2), **kw)),
    "mamba_step": _seeded(lambda randn, rand, **kw: torch.cat([t.flatten() for t in ops.mamba_step(
        randn(2, 3), randn(2, 4, 2), randn(2, 4, 2), in_weight=randn(8, 3), in_bias=randn(8), conv_weight=randn(4, 3),
        conv_bias=randn(4), x_weight=randn(5, 4), dt_weight=randn(4, 1), dt_bias=randn(4), A=-rand(4, 2), D=randn(4),
        out_weight=randn(3, 4), out_bias=randn(3), **kw)])),
    "matvec": _seeded(lambda randn, rand, **kw: ops.matvec(randn(2, 3), randn(5, 3), randn(5), **kw)),
    "selective_scan_step": _seeded(lambda randn, rand, **kw: torch.cat([t.flatten() for t in ops.selective_scan_step(
        randn(1, 2), randn(1, 2), -rand(2, 3), randn(1, 3), randn(1, 3), randn(1, 2, 3), D=randn(2), z=randn(1, 2),
        delta_bias=randn(2), delta_softplus=True, **kw)])),
    "selective_scan": _seeded(lambda randn, rand, **kw: ops.selective_scan(
        randn(1, 5, 2), rand(1, 5, 2), -rand(2, 3), randn(1, 5, 3), randn(1, 5, 3), **kw)),
    "ssd": _seeded(lambda randn, rand, **kw: ops.ssd(randn(1, 5, 2, 2), rand(1, 5, 2), -rand(2) - 0.5,
                                                     randn(1, 5, 1, 3), randn(1, 5, 1, 3), **kw)),
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
def test_every_op_answers_to_the_shared_vocabulary(op, monkeypatch):
    """``reference`` and ``torch`` exist for every op, and ``torch`` is the default on CPU, unless the op has
    compiled CPU kernels (``numba``) and they can run here."""
    _clear_env(monkeypatch, op)
    available = op.available_backends("cpu")
    assert {"reference", "torch"} <= set(available), available
    assert op.resolve() is op.resolve("numba" if "numba" in available else "torch")
    assert set(VOCABULARY) >= {"reference", "torch", "triton"}


@pytest.mark.parametrize("name", ["reference", "torch"])
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.name)
def test_shared_names_through_ssmlab_backend(op, name, monkeypatch):
    """``SSMLAB_BACKEND=reference`` and ``=torch`` each run every op, with the reference's result."""
    _clear_env(monkeypatch, op)
    want = CALLS[op.name](backend="reference")
    calls = _record_calls(monkeypatch, op)
    monkeypatch.setenv("SSMLAB_BACKEND", name)
    got = CALLS[op.name]()
    assert calls == [name]
    assert_close(got, want, atol=1e-10, rtol=1e-10, name=f"{op.name} with SSMLAB_BACKEND={name} vs reference")


def test_aliases_run_their_backend_and_are_never_chosen_by_priority(monkeypatch):
    op = _toy()
    op.register("chunked_impl", priority=5, aliases=("chunked", "torch"))(lambda: "chunked")
    monkeypatch.delenv("SSMLAB_TOY_BACKEND", raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    assert op.resolve("torch")() == op.resolve("chunked")() == "chunked"
    assert op.backends["torch"].alias_of == "chunked_impl"
    assert op.resolve()() == "fast"


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.name)
def test_every_op_has_a_reference_and_a_fast_path(op, monkeypatch):
    _clear_env(monkeypatch, op)
    available = op.available_backends("cpu")
    assert "reference" in available and len(available) >= 2, available
    # Priority chooses among the backends allowed to be chosen on the CPU (never triton, even when interpreted).
    best = max((op.backends[b] for b in available if op.backends[b].alias_of is None
                and (op.backends[b].auto_devices is None or "cpu" in op.backends[b].auto_devices)),
               key=lambda b: b.priority)
    assert best.name != "reference"
    calls = _record_calls(monkeypatch, op)
    CALLS[op.name]()
    assert calls == [best.name]


@pytest.mark.parametrize("op, name", BACKENDS, ids=lambda v: v if isinstance(v, str) else v.name)
def test_env_var_selects_each_backend(op, name, monkeypatch):
    """The op's own variable selects any of its backends and wins over ``SSMLAB_BACKEND``, which is
    meant for the shared names (ops call other ops, which read it too)."""
    _clear_env(monkeypatch, op)
    calls = _record_calls(monkeypatch, op)
    monkeypatch.setenv(op.env_var, name)
    monkeypatch.setenv("SSMLAB_BACKEND", "torch" if name == "reference" else "reference")
    CALLS[op.name]()
    assert calls == [name]


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


def test_triton_backend_is_chosen_only_on_cuda_and_by_name_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("SSMLAB_TOY_BACKEND", raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    op = Op("toy", register=False)
    op.register("torch", priority=10)(lambda: "torch")
    op.register_triton(lambda: (lambda: "triton"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert op.resolve()() == "torch"  # never chosen by priority on a CPU tensor
    pytest.importorskip("triton")
    assert op.resolve("triton")() == "triton"  # but runs when asked for, through the interpreter
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailableError, match="'triton' is not available for device cpu"):
        op.resolve("triton")
