"""The short causal depthwise convolution with its state, as Mamba (arXiv 2312.00752), Mamba-2
(arXiv 2405.21060), the gated DeltaNet and GLA layers and H3's shift SSM (arXiv 2212.14052) use it.

For each channel d, with K taps and ``xs`` the sequence x preceded by the state's K - 1 inputs::

    y[t, d] = bias[d] + sum_{j < K} weight[d, j] xs[t + j, d]      (xs[K - 1 + t] = x[t])
    y[t, d] = silu(y[t, d])                                         (activation="silu")

so tap ``K - 1`` weighs the current input and tap ``j`` the input ``K - 1 - j`` steps back: the
cross-correlation of ``nn.Conv1d`` with weight (D, 1, K), whose ``weight[:, 0]`` is this op's weight.

Shapes: x, y (B, L, D); weight (D, K); bias (D,); state (B, D, K - 1), the last K - 1 inputs
(zeros when no initial state is given). The final state is the last K - 1 inputs of ``xs``: it
continues the sequence exactly (``causal_conv_step`` runs one position).

Computation is in float32 at least (float64 for float64 inputs); y and the state have x's dtype.

Backends: ``reference`` (a sum over the taps, the specification), ``torch`` (``F.conv1d`` or shifted
multiply-adds, the default on the CPU where Numba is absent), ``numba`` (compiled loops, the default on
the CPU where Numba is installed; see ``numba.py``) and ``triton`` (Triton kernels forward and backward,
default on CUDA tensors).
"""

from __future__ import annotations

import importlib

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

causal_conv_op = Op("causal_conv")
causal_conv_step_op = Op("causal_conv_step")
ACTIVATIONS = (None, "silu")


def check_inputs(x, weight, bias=None, initial_state=None, activation=None, *, step=False):
    """Validate the arguments of ``causal_conv`` (or of ``causal_conv_step`` when ``step``)."""
    if step:
        check_tensor("x", x, ("B", "D"), allow_complex=False)
        batch, channels = x.shape
    else:
        check_tensor("x", x, ("B", "L", "D"), allow_complex=False)
        batch, length, channels = x.shape
        if length == 0:
            raise ValueError("causal_conv needs at least one position (L >= 1)")
    check_tensor("weight", weight, (channels, "K"), allow_complex=False)
    if weight.shape[1] == 0:
        raise ValueError("causal_conv needs at least one tap (K >= 1)")
    if bias is not None:
        check_tensor("bias", bias, (channels,), allow_complex=False)
    if initial_state is not None or step:
        check_tensor("state" if step else "initial_state", initial_state, (batch, channels, weight.shape[1] - 1),
                     allow_complex=False)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def causal_conv(x, weight, bias=None, *, activation: str | None = None, initial_state=None,
                return_final_state: bool = False, backend: str | None = None):
    """Convolve each channel of x causally with its own K taps, continuing from a state.

    Args:
        x: (B, L, D) input.
        weight: (D, K) taps; ``weight[:, K - 1]`` weighs the current input.
        bias: (D,) or None.
        activation: None or "silu", applied to the output.
        initial_state: (B, D, K - 1), the K - 1 inputs before x (oldest first); zeros when None.
        return_final_state: also return the last K - 1 inputs, the state to continue from.
        backend: "reference", "torch" or "triton"; see the module docstring.

    Returns:
        ``y`` (B, L, D) in x's dtype, or ``(y, final_state)`` with the state (B, D, K - 1) in x's dtype.
    """
    check_inputs(x, weight, bias, initial_state, activation)
    fn = causal_conv_op.resolve(backend, x.device)
    y, state = fn(x, weight, bias, activation=activation, initial_state=initial_state)
    return (y, state) if return_final_state else y


def causal_conv_step(x, weight, state, bias=None, *, activation: str | None = None, backend: str | None = None):
    """One position, for generation: x (B, D), state (B, D, K - 1) -> ``(y (B, D), new_state)``.

    Backends: ``reference`` (the sum over taps; ``torch`` is the same function) and ``numba`` (one compiled
    call, the default on the CPU where Numba is installed; see ``numba_step.py``)."""
    check_inputs(x, weight, bias, state, activation, step=True)
    return causal_conv_step_op.resolve(backend, x.device)(x, weight, state, bias, activation)


from ssmlab.ops.causal_conv import reference as _reference  # noqa: E402  (registers the backend)
from ssmlab.ops.causal_conv import torch as _torch_backend  # noqa: E402,F401
from ssmlab.ops.causal_conv import numba as _numba_backend  # noqa: E402,F401
from ssmlab.ops.causal_conv import numba_step as _numba_step  # noqa: E402

causal_conv_step_op.register("reference", priority=0)(_reference.step)
causal_conv_step_op.register("torch", priority=1)(_reference.step)
causal_conv_step_op.register("numba", priority=20, available=_numba_step.numba_available)(
    _numba_step.causal_conv_step_numba)

causal_conv_op.register_triton(lambda: importlib.import_module("ssmlab.ops.causal_conv.triton").causal_conv_triton)
