"""Linear layers for generation on the CPU: ``project`` (a linear layer applied to the rows of one generated
position, by ``ops.matvec``), ``Int8Linear`` (int8 weights with a scale per row) and ``quantize_int8``."""

from __future__ import annotations

import torch
from torch import nn

from ssmlab.ops.matvec import matvec, matvec_op

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


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and one float scale per output row (weight-only quantisation): it computes
    ``x (q * scale[:, None])^T + bias``, with ``q = round(W / scale)`` and ``scale = max_k |W[n, k]| / 127`` (the
    symmetric per-channel int8 of LLM.int8's vector-wise quantisation without its outliers, arXiv 2208.07339, and
    of llama.cpp's Q8_0 with one block per row). Activations stay in float.

    The few rows of a generated position go to ``ops.matvec`` with the int8 weight (a quarter of float32's bytes
    to stream); longer inputs are multiplied by the dequantised weight (``F.linear``). Made from a trained
    ``nn.Linear`` by :meth:`from_linear`, or for a whole model by :func:`quantize_int8`. Not trainable.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, device=device, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=dtype) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device,
                    dtype=weight.dtype)
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(weight.dtype).tiny) / 127
        layer.qweight.copy_(torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float weight (N, K) this layer stands for."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= MAX_ROWS * self.in_features and x.dtype == self.scale.dtype:
            y = matvec(x.reshape(-1, self.in_features), self.qweight, self.bias, scale=self.scale)
            return y.reshape(*x.shape[:-1], self.out_features)
        return nn.functional.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else
                                    self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module, *, skip: tuple[str, ...] = ("dt_proj",), inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with every plain ``nn.Linear`` replaced by an :class:`Int8Linear`,
    but those whose name ends with one of ``skip`` (Mamba's ``dt_proj``, whose weight the mixer reads directly).
    A tied LM head gets its own int8 copy; the embedding stays as it was. For generation on the CPU."""
    import copy

    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and not full.endswith(skip):
                setattr(module, child_name, Int8Linear.from_linear(child))
    return model
