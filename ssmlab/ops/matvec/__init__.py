"""A linear map applied to a few rows: ``y = x W^T + b``, the matrix-vector products of generation.

Generating one token reads every weight of the model once to multiply it by one
vector per sequence, so its time is that of streaming the weights from memory.
PyTorch's CPU kernel for ``F.linear`` with one row reads float32 weights at about
16 GB/s on a 2-core machine that streams 33 to 40 GB/s, so the ``numba`` backend
(compiled loops over blocks of output rows, on ``torch.get_num_threads()`` threads)
does this product for the generation path.

Shapes: x (R, K), weight (N, K), bias (N,) or None -> y (R, N), in x's dtype.

Backends: ``reference`` (``F.linear``, the specification), ``torch`` (the same call:
it is PyTorch's fast path already) and ``numba`` (available where Numba is installed
and the tensors are on the CPU, and then the default; float32 and float64; its
backward is the usual three products in PyTorch). It is meant for a few rows: the
mixers call it through :func:`ssmlab.layers.linear.project` for the rows of one
generated position, and leave longer inputs to ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops._checks import check_tensor
from ssmlab.ops._dispatch import Op

matvec_op = Op("matvec")


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           backend: str | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (R, K), weight (N, K), bias (N,) or None; returns (R, N) in x's dtype."""
    check_tensor("x", x, ("R", "K"), allow_complex=False)
    check_tensor("weight", weight, ("N", x.shape[1]), allow_complex=False)
    if bias is not None:
        check_tensor("bias", bias, (weight.shape[0],), allow_complex=False)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"matvec needs x, weight and bias of one dtype; got {x.dtype}, {weight.dtype}"
                         f"{'' if bias is None else ', ' + str(bias.dtype)}")
    return matvec_op.resolve(backend, x.device)(x, weight, bias)


@matvec_op.register("reference", priority=0)
def matvec_reference(x, weight, bias=None):
    return F.linear(x, weight, bias)


matvec_op.register("torch", priority=1)(matvec_reference)

from ssmlab.ops.matvec import numba as _numba_backend  # noqa: E402,F401
