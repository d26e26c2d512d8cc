"""A linear map applied to a few rows: ``y = x W^T + b``, the matrix-vector products of generation.

Generating one token reads every weight of the model once to multiply it by one
vector per sequence, so its time is that of streaming the weights from memory.
PyTorch's CPU kernel for ``F.linear`` with one row reads float32 weights at about
16 GB/s on a 2-core machine that streams 33 to 40 GB/s, so the ``numba`` backend
(compiled loops over blocks of output rows, on ``torch.get_num_threads()`` threads)
does this product for the generation path.

Shapes: x (R, K), weight (N, K), bias (N,) or None -> y (R, N), in x's dtype; with ``scale`` (N,), weight is
int8 and stands for ``weight * scale[:, None]`` (weight-only int8 quantisation, one scale per output row).

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
           scale: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """``x @ (weight * scale[:, None]).T + bias`` for x (R, K), weight (N, K), scale (N,) or None, bias (N,) or None;
    returns (R, N) in x's dtype. ``weight`` is int8 with a ``scale`` per row (weight-only int8 quantisation,
    :class:`ssmlab.layers.linear.Int8Linear`) or, without ``scale``, of x's dtype."""
    check_tensor("x", x, ("R", "K"), allow_complex=False)
    check_tensor("weight", weight, ("N", x.shape[1]), allow_complex=False, allow_integer=scale is not None)
    for name, t in (("bias", bias), ("scale", scale)):
        if t is not None:
            check_tensor(name, t, (weight.shape[0],), allow_complex=False)
    if scale is not None and weight.dtype != torch.int8:
        raise ValueError(f"matvec with a scale needs an int8 weight, got {weight.dtype}")
    if scale is None and weight.dtype != x.dtype:
        raise ValueError(f"matvec needs x and weight of one dtype (or an int8 weight with a scale); got {x.dtype}, "
                         f"{weight.dtype}")
    if any(t is not None and t.dtype != x.dtype for t in (bias, scale)):
        raise ValueError(f"matvec needs bias and scale in x's dtype {x.dtype}")
    return matvec_op.resolve(backend, x.device)(x, weight, bias, scale)


@matvec_op.register("reference", priority=0)
def matvec_reference(x, weight, bias=None, scale=None):
    if scale is not None:
        weight = weight.to(x.dtype) * scale[:, None]
    return F.linear(x, weight, bias)


matvec_op.register("torch", priority=1)(matvec_reference)

from ssmlab.ops.matvec import numba as _numba_backend  # noqa: E402,F401
