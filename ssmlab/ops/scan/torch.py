"""Vectorised scans in pure PyTorch: the associative (Hillis-Steele) scan and the chunked scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops.scan import linear_scan_op

DEFAULT_CHUNK = 64


def _shift(x: torch.Tensor, offset: int, fill: float) -> torch.Tensor:
    """``x`` moved ``offset`` positions later along dim 1, the first ``offset`` positions set to ``fill``."""
    pad = x.new_full((x.shape[0], offset) + x.shape[2:], fill)
    return torch.cat([pad, x[:, : x.shape[1] - offset]], dim=1)


def associative_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan along dim 1 from a zero state: returns (prod_{s<=t} a_s, h_t)."""
    offset = 1
    while offset < b.shape[1]:
        # (a, b)_t <- (a, b)_{t-offset} . (a, b)_t; out of place so autograd can differentiate it.
        b = b + a * _shift(b, offset, 0.0)
        a = a * _shift(a, offset, 1.0)
        offset *= 2
    return a, b


@linear_scan_op.register("associative", priority=5)
def linear_scan_associative(a, b, initial_state=None):
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if initial_state is not None:
        b = torch.cat([b[:, :1] + a[:, :1] * initial_state.to(dtype)[:, None], b[:, 1:]], dim=1)
    return associative_scan(a, b)[1]


@linear_scan_op.register("chunked", priority=10)
def linear_scan_chunked(a, b, initial_state=None, chunk_size: int = DEFAULT_CHUNK):
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    batch, length = b.shape[:2]
    rest = b.shape[2:]
    # A sequence shorter than a chunk is one chunk of its own length, not padded to a whole one.
    chunk_size = min(chunk_size, length)
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length
    if pad:
        # Padding with a = 1, b = 0 leaves the carried state unchanged.
        widths = [0, 0] * len(rest) + [0, pad]
        a, b = F.pad(a, widths, value=1.0), F.pad(b, widths, value=0.0)
    a = a.reshape(batch * chunks, chunk_size, *rest)
    b = b.reshape(batch * chunks, chunk_size, *rest)
    a_cum, h_local = associative_scan(a, b)  # within each chunk, from a zero state
    a_cum = a_cum.reshape(batch, chunks, chunk_size, *rest)
    h_local = h_local.reshape(batch, chunks, chunk_size, *rest)
    # Carry between chunks: the state entering chunk c.
    carry = torch.zeros_like(b[:1, 0]).expand(batch, *rest) if initial_state is None else initial_state.to(dtype)
    carries = []
    for c in range(chunks):
        carries.append(carry)
        carry = a_cum[:, c, -1] * carry + h_local[:, c, -1]
    carries = torch.stack(carries, dim=1)  # (B, chunks, ...)
    h = h_local + a_cum * carries[:, :, None]
    return h.reshape(batch, chunks * chunk_size, *rest)[:, :length]
