"""One position of a whole Mamba mixer (arXiv 2312.00752), for generation: the projections, the short
convolution, the input-dependent step size, B and C, and the selective scan's step, from x_t to the output.

Generating a token with a Mamba model runs, per layer, a dozen small operations on one vector each; on a CPU
their launch costs come to about as much as streaming the layer's weights from memory. This op computes the
mixer's step as one call, so that a backend can do it in one pass::

    x, z   = split(in_weight x_t + in_bias)                          (E channels each)
    u, conv_state = causal_conv_step(x, conv_weight, conv_state, conv_bias, activation="silu")
    dt, B, C = split(x_weight u)                                     (R, N, N)
    y, ssm_state = selective_scan_step(u, dt_weight dt, A, B, C, ssm_state, D=D, z=z,
                                       delta_bias=dt_bias, delta_softplus=True)
    out    = out_weight y + out_bias

Shapes: x_t (B, M); in_weight (2E, M), in_bias (2E,) or None; conv_state (B, E, K - 1); conv_weight (E, K),
conv_bias (E,) or None; x_weight (R + 2N, E); dt_weight (E, R); dt_bias (E,); A (E, N); D (E,) or None;
ssm_state (B, E, N); out_weight (M, E), out_bias (M,) or None. Returns ``(out (B, M), conv_state, ssm_state)``.

Backends: ``reference`` (the composition above of ``causal_conv_step`` and ``selective_scan_step``'s
references and ``F.linear``), ``torch`` (the same composition on their ``torch`` backends) and
``numba`` (one compiled pass, single-threaded, the default on the CPU where Numba is installed; see
``numba.py``). The ``mamba`` mixer's ``step`` calls it when its projections are plain ``nn.Linear`` layers or
:class:`ssmlab.layers.linear.Int8Linear` (int8 weights with a scale per row; a model quantised with
``torch.ao.quantization.quantize_dynamic`` keeps the separate operations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op
from ssmlab.ops.causal_conv import causal_conv_step
from ssmlab.ops.selective_scan import selective_scan_step

mamba_step_op = Op("mamba_step")
WEIGHTS = ("in_weight", "in_bias", "conv_weight", "conv_bias", "x_weight", "dt_weight", "dt_bias", "A", "D",
           "out_weight", "out_bias", "in_scale", "x_scale", "out_scale")


def check_inputs(x, conv_state, ssm_state, w) -> None:
    check_tensor("x", x, ("B", "M"), allow_complex=False)
    batch, d_model = x.shape
    for name in ("in", "x", "out"):
        weight, scale = w[f"{name}_weight"], w[f"{name}_scale"]
        if (scale is not None) != (weight.dtype == torch.int8):
            raise ValueError(f"{name}_weight must be int8 exactly when {name}_scale is given, got {weight.dtype} "
                             f"and {'a' if scale is not None else 'no'} scale")
        if scale is not None:
            check_tensor(f"{name}_scale", scale, (weight.shape[0],), allow_complex=False)
    check_tensor("in_weight", w["in_weight"], ("2E", d_model), allow_complex=False, allow_integer=True)
    if w["in_weight"].shape[0] % 2:
        raise ValueError(f"in_weight must have an even number of rows (x and z), got {w['in_weight'].shape[0]}")
    inner = w["in_weight"].shape[0] // 2
    check_tensor("conv_weight", w["conv_weight"], (inner, "K"), allow_complex=False)
    check_tensor("conv_state", conv_state, (batch, inner, w["conv_weight"].shape[1] - 1), allow_complex=False)
    check_tensor("A", w["A"], (inner, "N"), allow_complex=False)
    n_state = w["A"].shape[1]
    check_tensor("ssm_state", ssm_state, (batch, inner, n_state), allow_complex=False)
    check_tensor("dt_weight", w["dt_weight"], (inner, "R"), allow_complex=False)
    check_tensor("x_weight", w["x_weight"], (w["dt_weight"].shape[1] + 2 * n_state, inner), allow_complex=False,
                 allow_integer=True)
    check_tensor("out_weight", w["out_weight"], ("M", inner), allow_complex=False, allow_integer=True)
    for name, size in (("in_bias", 2 * inner), ("conv_bias", inner), ("dt_bias", inner), ("D", inner),
                       ("out_bias", w["out_weight"].shape[0])):
        if w[name] is not None:
            check_tensor(name, w[name], (size,), allow_complex=False)
    if w["dt_bias"] is None:
        raise ValueError("mamba_step needs dt_bias (E,)")


def mamba_step(x, conv_state, ssm_state, *, in_weight, in_bias=None, conv_weight, conv_bias=None, x_weight,
               dt_weight, dt_bias, A, D=None, out_weight, out_bias=None, in_scale=None, x_scale=None, out_scale=None,
               backend: str | None = None):
    """One position of a Mamba mixer; see the module docstring. Returns ``(out, conv_state, ssm_state)``.

    ``in_scale``, ``x_scale``, ``out_scale`` (rows,): the projection's weight is int8 and stands for
    ``weight * scale[:, None]`` (:class:`ssmlab.layers.linear.Int8Linear`)."""
    weights = dict(in_weight=in_weight, in_bias=in_bias, conv_weight=conv_weight, conv_bias=conv_bias,
                   x_weight=x_weight, dt_weight=dt_weight, dt_bias=dt_bias, A=A, D=D, out_weight=out_weight,
                   out_bias=out_bias, in_scale=in_scale, x_scale=x_scale, out_scale=out_scale)
    check_inputs(x, conv_state, ssm_state, weights)
    return mamba_step_op.resolve(backend, x.device)(x, conv_state, ssm_state, *(weights[k] for k in WEIGHTS))


def _dequantized(weight, scale, dtype):
    return weight if scale is None else weight.to(dtype) * scale.to(dtype)[:, None]


def _composed(x, conv_state, ssm_state, in_weight, in_bias, conv_weight, conv_bias, x_weight, dt_weight, dt_bias,
              A, D, out_weight, out_bias, in_scale=None, x_scale=None, out_scale=None, *, backend=None):
    in_weight, x_weight, out_weight = (_dequantized(w, s, x.dtype) for w, s in
                                       ((in_weight, in_scale), (x_weight, x_scale), (out_weight, out_scale)))
    xs, z = F.linear(x, in_weight, in_bias).chunk(2, dim=-1)
    u, conv_state = causal_conv_step(xs, conv_weight, conv_state, conv_bias, activation="silu", backend=backend)
    rank, n_state = dt_weight.shape[1], A.shape[1]
    dt, b, c = F.linear(u, x_weight).split([rank, n_state, n_state], dim=-1)
    y, ssm_state = selective_scan_step(u, dt @ dt_weight.T, A, b, c, ssm_state, D=D, z=z, delta_bias=dt_bias,
                                       delta_softplus=True, backend=backend)
    return F.linear(y, out_weight, out_bias), conv_state, ssm_state


@mamba_step_op.register("reference", priority=0)
def mamba_step_reference(*args):
    return _composed(*args, backend="reference")


@mamba_step_op.register("torch", priority=1)
def mamba_step_torch(*args):
    return _composed(*args, backend="torch")


from ssmlab.ops.mamba_step import numba as _numba_backend  # noqa: E402,F401
