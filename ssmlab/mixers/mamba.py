"""Mamba: the selective state space block (arXiv 2312.00752).

``x -> in_proj -> (x, z)``; ``x -> causal depthwise conv -> SiLU -> selective
scan (S6)`` whose step ``dt``, input matrix ``B`` and output matrix ``C``
depend on the input; the result is gated by ``SiLU(z)`` and projected back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmlab.layers.conv import ShortConvolution, causal_conv
from ssmlab.layers.linear import Int8Linear, project
from ssmlab.mixers.base import LengthsInForward, Mixer, padding_mask, State, ssm_dtype, ssm_parameter
from ssmlab.ops import selective_scan, selective_scan_step
from ssmlab.ops.mamba_step import mamba_step_op
from ssmlab.ops.discretize import init_dt_bias
from ssmlab.registry import register


class _LowRank(torch.autograd.Function):
    """``dt @ weight.T`` for dt (..., R) of a small rank R and weight (E*D, R), with the backward's two products
    taken in the orientation that keeps the long dimension inner: at R=4, E*D=128 and 2048 rows, on one CPU thread,
    75 us in place of autograd's 420 us (both products of ``mm``'s backward run with an output of width R there)."""

    @staticmethod
    def forward(ctx, dt, weight):
        ctx.save_for_backward(dt, weight)
        return dt @ weight.T

    @staticmethod
    def backward(ctx, grad):
        dt, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])  # (M, E*D)
        grad_dt = (weight.T @ rows.T).T.reshape(dt.shape) if ctx.needs_input_grad[0] else None
        grad_weight = (dt.reshape(-1, dt.shape[-1]).T @ rows).T if ctx.needs_input_grad[1] else None
        return grad_dt, grad_weight


@register("mixer", "mamba", description="Mamba selective SSM block (S6 scan, conv, gate)", paper="2312.00752")
class Mamba(LengthsInForward, Mixer):
    """The Mamba block (Gu and Dao, arXiv 2312.00752).

    Args (defaults as in the paper's code):
        d_model: width D.
        d_state: SSM state size N per channel (16).
        d_conv: width of the causal depthwise convolution (4).
        expand: inner width E*D (2).
        dt_rank: rank of the dt projection; ``None`` means ``ceil(D / 16)``.
        dt_min, dt_max: range of the log-uniform initial step (0.001, 0.1); dt_init_floor (1e-4).
        dt_scale: scale of the dt projection's weight init (1.0).
        conv_bias (True), bias (False): biases of the convolution and of the in/out projections.
        lr: learning rate for A_log and D, which also get no weight decay (``None``: the trainer's).

    A is initialised to S4D-Real, ``A[d, n] = -(n + 1)`` (arXiv 2206.11893), stored as
    ``A_log``; D to ones. dt_proj's bias is initialised so that ``softplus(bias)`` is
    log-uniform in ``[dt_min, dt_max]``.

    State: ``{"conv": (B, E*D, d_conv - 1), "ssm": (B, E*D, N)}``: the last inputs of
    the convolution and the SSM state.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 *, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 conv_bias: bool = True, bias: bool = False, lr: float | None = None, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if d_state < 1 or d_conv < 1 or expand < 1:
            raise ValueError(f"mamba: d_state, d_conv and expand must be positive, got {d_state}, {d_conv}, {expand}")
        self.d_state, self.d_conv = d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **self.factory)
        self.conv1d = ShortConvolution(self.d_inner, d_conv, bias=conv_bias, **self.factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **self.factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **self.factory)
        with torch.no_grad():
            std = self.dt_rank ** -0.5 * dt_scale
            self.dt_proj.weight.uniform_(-std, std)
        self.dt_proj.bias = ssm_parameter(init_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, device=device,
                                                       dtype=ssm_dtype(dtype)), dtype, weight_decay=None)
        a = torch.arange(1, d_state + 1, device=device, dtype=torch.float64).repeat(self.d_inner, 1)
        self.A_log = ssm_parameter(torch.log(a), self.factory["dtype"], lr=lr)
        self.D = ssm_parameter(torch.ones(self.d_inner, device=device), self.factory["dtype"], lr=lr)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **self.factory)

    def _ssm_inputs(self, x: torch.Tensor):
        dt, b, c = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        weight = self.dt_proj.weight
        if weight.dtype != dt.dtype:  # dt in bf16 or fp16 under autocast: the product in its dtype, as autocast's
            weight = weight.to(dt.dtype)
        # The custom backward only where a gradient is recorded: generation keeps the plain product.
        delta = _LowRank.apply(dt, weight) if torch.is_grad_enabled() else dt @ weight.T
        return delta, b, c  # (..., E*D), (..., N), (..., N)

    def _forward(self, x, state, return_state, lengths=None):
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E*D) each
        # The convolution and its SiLU in one op (one pass forward and backward with the numba backend).
        xs, conv_state = causal_conv(xs, self.conv1d.weight, self.conv1d.bias, None if state is None else state["conv"],
                                     lengths, activation="silu")
        dt, b, c = self._ssm_inputs(xs)
        bias, softplus = self.dt_proj.bias, True
        if lengths is not None:
            # A zero step at padded positions: exp(0 * A) = 1 and 0 * B u = 0 leave the state as it was.
            dt = F.softplus(dt + bias) * padding_mask(lengths, x.shape[1])[..., None]
            bias, softplus = None, False
        y, ssm_state = selective_scan(xs, dt, -torch.exp(self.A_log), b, c, D=self.D, z=z,
                                      delta_bias=bias, delta_softplus=softplus,
                                      initial_state=None if state is None else state["ssm"],
                                      return_final_state=True, backend=self.backend)
        out = self.out_proj(y)
        return out, ({"conv": conv_state, "ssm": ssm_state} if return_state else None)

    def _step(self, x_t, state):
        projections = (self.in_proj, self.x_proj, self.out_proj)
        if type(self.dt_proj) is nn.Linear and all(type(p) in (nn.Linear, Int8Linear) for p in projections):
            # The whole step as one op (one compiled pass on the CPU); a model quantised by torch keeps its own
            # modules below. Called on its backend directly: the mixer's parameters agree by construction and step()
            # checked x_t and the state, so the op's own checks (a dozen per layer and token) are skipped.
            (in_w, in_s), (x_w, x_s), (out_w, out_s) = (
                (p.qweight, p.scale) if type(p) is Int8Linear else (p.weight, None) for p in projections)
            out, conv_state, ssm_state = mamba_step_op.resolve(None, x_t.device)(
                x_t, state["conv"], state["ssm"], in_w, self.in_proj.bias, self.conv1d.weight[:, 0], self.conv1d.bias,
                x_w, self.dt_proj.weight, self.dt_proj.bias, self._step_A(), self.D, out_w, self.out_proj.bias, in_s,
                x_s, out_s)
            return out, {"conv": conv_state, "ssm": ssm_state}
        xs, z = project(self.in_proj, x_t).chunk(2, dim=-1)  # (B, E*D)
        xs, conv_state = self.conv1d.step(xs, state["conv"], activation="silu")
        dt, b, c = self._ssm_inputs(xs)
        y, ssm_state = selective_scan_step(xs, dt, self._step_A(), b, c, state["ssm"], D=self.D, z=z,
                                           delta_bias=self.dt_proj.bias, delta_softplus=True)
        return project(self.out_proj, y), {"conv": conv_state, "ssm": ssm_state}

    def _step_A(self) -> torch.Tensor:
        """``-exp(A_log)``, kept from one generation step to the next while ``A_log`` is the same tensor, unchanged
        (its version counter counts in-place updates); recomputed when a gradient is recorded or under torch.compile."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return -torch.exp(self.A_log)
        key = (self.A_log.data_ptr(), self.A_log._version, self.A_log.dtype)
        kept = self.__dict__.get("_kept_A")
        if kept is None or kept[0] != key:
            kept = self.__dict__["_kept_A"] = (key, -torch.exp(self.A_log))
        return kept[1]

    def _init_state(self, batch_size, *, device, dtype) -> State:
        dtype = dtype or self.conv1d.weight.dtype  # not out_proj: dynamic quantisation replaces its weight
        return {"conv": self.conv1d.init_state(batch_size, device=device, dtype=dtype),
                "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                   dtype=torch.promote_types(dtype, torch.float32))}
