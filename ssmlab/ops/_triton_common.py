"""What the Triton backends share outside their kernels (imported only by the lazily loaded ``triton.py`` modules)."""

from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


def dot_args(t: torch.Tensor, kernel) -> dict:
    """The operand type and precision of the matrix products: bf16 or fp16 inputs' own type (the tensor cores),
    float32 otherwise, multiplied in full float32 ("ieee", not tf32, as torch's matmul by default). Float32 when
    ``kernel`` runs under Triton's interpreter, whose ``tl.dot`` multiplies the raw bits of bf16 operands
    (triton 3.9)."""
    if t.dtype not in (torch.bfloat16, torch.float16) or isinstance(kernel, InterpretedFunction):
        return dict(DT=tl.float32, PREC="ieee")
    return dict(DT=tl.bfloat16 if t.dtype == torch.bfloat16 else tl.float16, PREC="tf32")
