"""The short causal depthwise convolution that carries its state, as in Mamba (arXiv 2312.00752),
Mamba-2 (arXiv 2405.21060), Hyena (arXiv 2302.10866) and H3's shift SSM (arXiv 2212.14052).

Each of C channels is convolved with its own k taps over the current and the last ``k - 1``
inputs. To continue a sequence, or to run one position at a time, the state is those last
``k - 1`` inputs (B, C, k - 1), zeros at the start.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ssmlab import ops


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                state: torch.Tensor | None = None, lengths: torch.Tensor | None = None, *,
                activation: str | None = None):
    """Depthwise causal convolution over x (B, L, C) continuing from the last ``k - 1`` inputs.

    ``weight`` (C, 1, k) is laid out as ``nn.Conv1d``'s (a cross-correlation: tap ``j`` multiplies
    the input ``k - 1 - j`` steps back), ``bias`` (C,) or None. ``state`` (B, C, k - 1) holds the
    inputs before this segment (zeros when None). ``activation`` None or "silu", applied to the output.
    Returns the output (B, L, C) and the new state (B, C, k - 1): the last ``k - 1`` inputs, or, for a
    right-padded batch with ``lengths`` (B,), those before each row's padding.

    The convolution is the ``causal_conv`` op (:mod:`ssmlab.ops.causal_conv`), so its backend (the Triton
    kernels on a GPU) is chosen as for every op.
    """
    y, new_state = ops.causal_conv(x, weight[:, 0], bias, activation=activation, initial_state=state,
                                   return_final_state=True)
    if lengths is None:
        return y, new_state
    width = weight.shape[-1]
    xt = rearrange(x, "b l c -> b c l")
    if state is None:
        state = xt.new_zeros(xt.shape[0], xt.shape[1], width - 1)
    full = torch.cat([state.to(xt.dtype), xt], dim=-1)  # (B, C, k - 1 + L)
    # Row b's last k - 1 real inputs sit at [n_b, n_b + k - 1) of ``full``.
    index = lengths[:, None, None] + torch.arange(width - 1, device=x.device)  # (B, 1, k - 1)
    return y, full.gather(-1, index.expand(-1, full.shape[1], -1))


class ShortConvolution(nn.Conv1d):
    """A depthwise causal ``nn.Conv1d`` over (B, L, C) that carries its state (the last ``k - 1`` inputs).

    Its parameters, their initialisation and their names (``weight`` (C, 1, k), ``bias`` (C,)) are
    those of ``nn.Conv1d(C, C, k, groups=C, bias=bias)``, so checkpoints of Mamba's ``conv1d`` load as
    they are.
    """

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = True, device=None, dtype=None):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, *, return_state: bool = False,
                lengths: torch.Tensor | None = None):
        """x (B, L, C), state (B, C, k - 1) or None -> y (B, L, C), and the new state when ``return_state``
        (with ``lengths`` (B,), that before each row's padding)."""
        y, new_state = causal_conv(x, self.weight, self.bias, state, lengths)
        return (y, new_state) if return_state else y

    def step(self, x_t: torch.Tensor, state: torch.Tensor, *, activation: str | None = None):
        """One position: x_t (B, C), state (B, C, k - 1) -> y_t (B, C), new state (``ops.causal_conv_step``)."""
        return ops.causal_conv_step(x_t, self.weight[:, 0], state, self.bias, activation=activation)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> torch.Tensor:
        """Zeros (B, C, k - 1): no input before the first position."""
        return torch.zeros(batch_size, self.in_channels, self.kernel_size[0] - 1,
                           device=self.weight.device if device is None else device, dtype=dtype or self.weight.dtype)
