"""S4ND: state spaces over multi-dimensional signals (Nguyen et al., arXiv 2210.06583), in 2-D.

An image is a sequence of H * W patches or pixels in row-major order. Each
channel has one diagonal SSM per axis (S4D's, arXiv 2206.11893); the 2-D
kernel is the outer product of the two 1-D kernels, ``K[d, i, j] = K_h[d, i] K_w[d, j]``,
applied with a 2-D FFT. As for images in the S4ND paper, each axis's kernel is
bidirectional (a second C per axis reaches the rows below / the columns to the
right), so the layer is not causal and has no step.

Each axis is the official code's diagonal kernel (state-spaces/s4 ``S4ND(mode="diag")``, ZOH,
``dt = exp(log_dt)``) with B fixed to ones; the official image configurations use its default
DPLR (S4) kernel per axis instead, with ``init="legs"``, a learnt B and a softplus step.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ssmlab.layers import GELUGLUOutput
from ssmlab.layers.diagonal_ssm import DiagonalSSM
from ssmlab.mixers.base import Mixer, at_least_float32, ssm_parameter
from ssmlab.registry import register


@register("mixer", "s4nd", description="S4ND: 2-D separable SSM kernels over images, FFT conv over H and W",
          paper="2210.06583", inputs="image")
class S4ND(Mixer):
    """The 2-D S4ND layer (arXiv 2210.06583) with the S4-style output stage.

    Args:
        d_model: channels D.
        image_shape: (H, W); inputs are (B, H * W, D) in row-major order. Required.
        d_state: state size N per axis (64, as N/2 conjugate pairs).
        init: S4D initialisation of each axis ("lin", "inv", "legs"; default "lin").
        dt_min, dt_max: per-axis, per-channel step initialised log-uniform in [0.001, 0.1].
        lr: learning rate for the SSM parameters (0.001), which get no weight decay.
        dropout: dropout after the activation (0.0).
        n_ssm: number of distinct A per axis, shared by groups of channels (default D: one per
            channel; the S4ND image configurations of the official code use 1).
    """

    causal = False

    def __init__(self, d_model: int, image_shape: tuple[int, int] | None = None, d_state: int = 64, *,
                 init: str = "lin", dt_min: float = 0.001, dt_max: float = 0.1, lr: float | None = 0.001,
                 dropout: float = 0.0, n_ssm: int | None = None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if image_shape is None or len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"s4nd: image_shape=(H, W) is required, got {image_shape!r}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"s4nd: d_state must be an even number >= 2, got {d_state}")
        dtype = self.factory["dtype"]
        self.image_shape = tuple(image_shape)
        axis = {"init": init, "dt_min": dt_min, "dt_max": dt_max, "lr": lr, "bidirectional": True, "skip": False,
                "n_ssm": n_ssm, **self.factory}
        # Each axis: a bidirectional S4D kernel, without a skip term of its own (the layer has one).
        self.axis_h = DiagonalSSM(d_model, d_state, **axis)
        self.axis_w = DiagonalSSM(d_model, d_state, **axis)
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=torch.float64), dtype, weight_decay=None)
        self.output = GELUGLUOutput(d_model, dropout, **self.factory)

    @staticmethod
    def _axis_kernel(ssm: DiagonalSSM, n: int) -> torch.Tensor:
        """(D, 2n - 1) taps for offsets -(n-1) .. n-1 of one axis."""
        k = ssm.kernel(n)  # (D, 2n): lags 0 .. n-1, then lags -1 .. -n
        return torch.cat([k[:, n:2 * n - 1].flip(-1), k[:, :n]], dim=-1)

    def kernel(self) -> torch.Tensor:
        """The 2-D kernel (D, 2H - 1, 2W - 1) over offsets -(H-1) .. H-1 and -(W-1) .. W-1."""
        h, w = self.image_shape
        return self._axis_kernel(self.axis_h, h)[:, :, None] * self._axis_kernel(self.axis_w, w)[:, None, :]

    def _forward(self, x, state, return_state):
        h, w = self.image_shape
        if x.shape[1] != h * w:
            raise ValueError(f"s4nd: x must have shape (B, H*W={h * w}, D={self.d_model}) for image_shape "
                             f"{self.image_shape}, got {tuple(x.shape)}")
        image = rearrange(at_least_float32(x), "b (h w) d -> b d h w", h=h)
        size = (2 * h - 1 + h, 2 * w - 1 + w)
        spectrum = torch.fft.rfft2(image, s=size) * torch.fft.rfft2(self.kernel().to(image.dtype), s=size)
        # Output (i, j) = sum over inputs (i', j') of K[i - i', j - j'], stored at index (i - i') + H - 1.
        y = torch.fft.irfft2(spectrum, s=size)[..., h - 1:2 * h - 1, w - 1:2 * w - 1]
        y = rearrange(y, "b d h w -> b (h w) d") + self.D * x
        return self.output(y.to(x.dtype)), None
