"""``F.conv1d`` with ``groups = D`` over the sequence preceded by its state; autograd differentiates it.

The convolution runs in x's dtype (cuDNN and the CPU kernels accumulate half precision in float32),
with the weight and bias cast to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.causal_conv import causal_conv_op
from ssmlab.ops.causal_conv.reference import activate


@causal_conv_op.register("torch", priority=10)
def causal_conv_torch(x, weight, bias=None, *, activation=None, initial_state=None):
    batch, length, channels = x.shape
    width = weight.shape[1]
    xt = x.transpose(1, 2)  # (B, D, L)
    state = xt.new_zeros(batch, channels, width - 1) if initial_state is None else initial_state.to(xt.dtype)
    full = torch.cat([state, xt], dim=-1)  # (B, D, K - 1 + L)
    y = F.conv1d(full, weight.to(x.dtype)[:, None, :], None if bias is None else bias.to(x.dtype),
                 groups=channels)  # (B, D, L)
    return activate(y, activation).transpose(1, 2), full[..., length:]
