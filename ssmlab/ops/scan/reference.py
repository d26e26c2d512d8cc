"""Sequential loop: the specification of ``linear_scan``."""

from __future__ import annotations

import torch

from ssmlab.ops.scan import linear_scan_op


@linear_scan_op.register("reference", priority=0)
def linear_scan_reference(a, b, initial_state=None):
    """``h_t = a_t * h_{t-1} + b_t``, one position at a time; the result dtype promotes a, b and the state."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    if initial_state is not None:
        dtype = torch.promote_types(dtype, initial_state.dtype)
    h = torch.zeros_like(b[:, 0], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out, dim=1)
