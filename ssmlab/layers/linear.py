"""``project``: a linear layer applied to the rows of one generated position, by ``ops.matvec``."""

from __future__ import annotations

import torch
from torch import nn

from ssmlab.ops.matvec import matvec_op

# Weights smaller than this are multiplied by nn.Linear. Measured on 2 cores with weights not in cache, one row:
# ops.matvec 28 against F.linear 30 µs at 80 x 1536, 50 against 49 µs at 256 x 768, 47 against 70 µs at 512 x 512,
# 170 against 244 to 290 µs at 1.2 M weights (about 28 against 16 GB/s).
MIN_WEIGHT = 1 << 18
MAX_ROWS = 16


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for x (..., K); by ``ops.matvec`` when ``layer`` is a plain ``nn.Linear`` with a large weight,
    x holds at most ``MAX_ROWS`` rows of float32 or float64 on the CPU and no gradient is recorded (generation).

    Any other layer (a dynamically quantised linear layer, say) and any other input go to ``layer(x)``.
    """
    weight = getattr(layer, "weight", None)
    if (type(layer) is not nn.Linear or x.device.type != "cpu" or weight.numel() < MIN_WEIGHT
            or x.numel() > MAX_ROWS * x.shape[-1] or x.shape[-1] != weight.shape[1] or torch.is_grad_enabled()
            or x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float64)):
        return layer(x)
    # nn.Linear keeps weight and bias consistent and x was checked above, so the backend is called directly.
    y = matvec_op.resolve(None, x.device)(x.reshape(-1, x.shape[-1]), weight, layer.bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])
