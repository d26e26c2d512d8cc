"""The short causal convolution op: the reference against a padded ``nn.Conv1d``, the torch backend against
the reference (outputs, final states, every gradient), pieces and steps against one call, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import causal_conv, causal_conv_step
from ssmlab.ops.causal_conv import causal_conv_op
from tests.utils import assert_close

# The backends that can run here (``numba`` only where Numba is installed); the triton backend has its own tests
# (test_causal_conv_triton.py), through Triton's interpreter.
BACKENDS = [b for b in causal_conv_op.available_backends("cpu") if b != "triton"]


def _inputs(length, width=4, batch=2, channels=5, bias=True, state=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return {"x": r(batch, length, channels), "weight": r(channels, width), "bias": r(channels) if bias else None,
            "initial_state": r(batch, channels, width - 1) if state else None}


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_reference_is_a_left_padded_conv1d(width, activation):
    kw = _inputs(7, width)
    x, w, b, h0 = kw["x"], kw["weight"], kw["bias"], kw["initial_state"]
    y, state = causal_conv(x, w, b, activation=activation, initial_state=h0, return_final_state=True,
                           backend="reference")
    full = torch.cat([h0, x.transpose(1, 2)], -1)  # (B, D, K - 1 + L)
    want = F.conv1d(full, w[:, None], b, groups=5).transpose(1, 2)
    assert_close(y, F.silu(want) if activation else want, atol=1e-13, name="y")
    assert_close(state, full[..., 7:], atol=0, name="final state: the last K - 1 inputs")
    by_hand = w[:, -1] * x[:, 0] + (w[:, :-1] * h0).sum(-1) + b  # the state's inputs, then x[0]
    assert_close(y[:, 0], F.silu(by_hand) if activation else by_hand, atol=1e-13, name="y[0] by hand")


def _grads(backend, kw, activation, loss=lambda y, h: y.sin().sum() + h.square().sum()):
    leaves = {k: v.clone().requires_grad_(True) for k, v in kw.items() if v is not None}
    y, state = causal_conv(leaves["x"], leaves["weight"], leaves.get("bias"), activation=activation,
                           initial_state=leaves.get("initial_state"), return_final_state=True, backend=backend)
    loss(y, state).backward()
    return [y, state] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves.values()], list(leaves)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"] + ["torch-conv1d"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width, length, bias, state", [(4, 1, True, True), (4, 2, True, True), (4, 33, False, True),
                                                        (3, 10, True, False), (1, 5, True, True), (2, 6, False, False)])
def test_fast_matches_reference(backend, activation, width, length, bias, state, monkeypatch):
    """``torch`` runs these small inputs as shifted multiply-adds; ``torch-conv1d`` forces its ``F.conv1d`` path."""
    if backend == "torch-conv1d":
        from ssmlab.ops.causal_conv import torch as torch_backend
        monkeypatch.setattr(torch_backend, "SHIFTED_MAX", 0)
        backend = "torch"
    kw = _inputs(length, width, bias=bias, state=state)
    want, names = _grads("reference", kw, activation)
    got, _ = _grads(backend, kw, activation)
    for label, g, w in zip(["y", "final state"] + [f"grad {n}" for n in names], got, want):
        assert_close(g, w, atol=1e-12, rtol=1e-12, name=f"{backend} {label}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [1, 4])
def test_pieces_and_steps_pass_the_state(backend, width):
    kw = _inputs(9, width)
    x, w, b, h0 = kw["x"], kw["weight"], kw["bias"], kw["initial_state"]
    whole, state = causal_conv(x, w, b, activation="silu", initial_state=h0, return_final_state=True,
                               backend=backend)
    y1, s1 = causal_conv(x[:, :2], w, b, activation="silu", initial_state=h0, return_final_state=True,
                         backend=backend)
    y2, s2 = causal_conv(x[:, 2:], w, b, activation="silu", initial_state=s1, return_final_state=True,
                         backend=backend)
    assert_close(torch.cat([y1, y2], 1), whole, atol=1e-14, name="two pieces vs one")
    assert_close(s2, state, atol=0, name="state after two pieces")
    s, steps = h0, []
    for t in range(9):
        y_t, s = causal_conv_step(x[:, t], w, s, b, activation="silu")
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), whole, atol=1e-14, name="steps vs forward")
    assert_close(s, state, atol=0, name="state after steps")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes(backend):
    """bfloat16 x with a float32 weight: y and the state in bfloat16, each gradient in its input's dtype."""
    kw = _inputs(6)
    leaves = {"x": kw["x"].bfloat16(), "weight": kw["weight"].float(), "bias": kw["bias"].float(),
              "initial_state": kw["initial_state"].float()}
    leaves = {k: v.requires_grad_(True) for k, v in leaves.items()}
    y, state = causal_conv(leaves["x"], leaves["weight"], leaves["bias"], activation="silu",
                           initial_state=leaves["initial_state"], return_final_state=True, backend=backend)
    assert y.dtype == state.dtype == torch.bfloat16
    want = causal_conv(*[kw[k] for k in ("x", "weight", "bias")], activation="silu",
                       initial_state=kw["initial_state"], backend="reference")
    assert_close(y.double(), want, atol=5e-2, name="bfloat16 y")
    (y.float().sum() + state.float().sum()).backward()
    for name, t in leaves.items():
        assert t.grad is not None and t.grad.dtype == t.dtype, name


def test_bad_inputs():
    kw = _inputs(5)
    x, w = kw["x"], kw["weight"]
    with pytest.raises(ValueError, match=r"weight must have shape \(5, K\)"):
        causal_conv(x, w[:4])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 5, 3\)"):
        causal_conv(x, w, initial_state=torch.zeros(2, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"L >= 1"):
        causal_conv(x[:, :0], w)
    with pytest.raises(ValueError, match=r"state must be a torch.Tensor of shape \(2, 5, 3\)"):
        causal_conv_step(x[:, 0], w, None)
