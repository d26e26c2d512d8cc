"""Rotary position embeddings, RoPE (Su et al., arXiv 2104.09864).

Pairs of channels of a query or key at absolute position ``n`` are rotated by
the angles ``n * theta_i`` with ``theta_i = base ** (-2 i / E)``,
``i = 0 .. E/2 - 1``. Because a rotation by ``n`` followed by the inverse
rotation by ``m`` is a rotation by ``n - m``, the dot product of a rotated query
and a rotated key depends on the positions only through ``n - m``: attention
scores see relative positions while each token is encoded on its own, which is
what lets a KV cache store keys already rotated.
"""

from __future__ import annotations

import torch
from torch import nn


def rotary_angles(positions: torch.Tensor, dim: int, *, base: float = 10000.0) -> torch.Tensor:
    """The rotation angles ``positions[..., None] * theta`` (..., dim / 2) of RoPE (arXiv 2104.09864).

    They are computed in float64 (float32 on devices without float64) so that large
    positions keep their precision before the cosine and sine are taken.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"rotary embeddings need an even head size >= 2, got {dim}")
    if base <= 1:
        raise ValueError(f"rotary base must be > 1, got {base}")
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    exponents = torch.arange(0, dim, 2, device=positions.device, dtype=wide) / dim  # (dim/2,)
    theta = base ** -exponents
    return positions.to(wide)[..., None] * theta  # (..., dim/2)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, *, base: float = 10000.0,
                 interleaved: bool = False) -> torch.Tensor:
    """Rotate ``x`` (..., L, E) by its positions (arXiv 2104.09864).

    Args:
        x: queries or keys, (..., L, E) with E even.
        positions: absolute positions, an integer or float tensor broadcastable to
            ``x.shape[:-1]``, e.g. (L,) or (B, 1, L) for ``x`` of shape (B, H, L, E).
        base: the base of the geometric progression of frequencies (default 10000).
        interleaved: rotate adjacent pairs ``(x_{2i}, x_{2i+1})`` as in the paper; the default
            ``False`` rotates ``(x_i, x_{i + E/2})``, the layout of GPT-NeoX and LLaMA checkpoints.
            Both are the same map up to a fixed permutation of the projection weights.

    Returns the rotated tensor, same shape and dtype as ``x``.
    """
    dim = x.shape[-1]
    angles = rotary_angles(positions, dim, base=base)  # (..., L, E/2)
    compute = torch.promote_types(x.dtype, torch.float32)
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)
    xf = x.to(compute)
    if interleaved:
        even, odd = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    else:
        first, second = xf[..., : dim // 2], xf[..., dim // 2:]
        out = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE (arXiv 2104.09864) as a module with no parameters: ``rope(x, positions)``.

    Args:
        dim: the head size E (even).
        base: frequency base (default 10000).
        interleaved: pair layout, see :func:`apply_rotary` (default False).
    """

    def __init__(self, dim: int, base: float = 10000.0, *, interleaved: bool = False):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"rotary embeddings need an even head size >= 2, got {dim}")
        if base <= 1:
            raise ValueError(f"rotary base must be > 1, got {base}")
        self.dim, self.base, self.interleaved = dim, float(base), interleaved

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` (..., L, E), ``positions`` broadcastable to (..., L) -> rotated ``x`` (..., L, E)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"rotary embedding of size {self.dim} got x of shape {tuple(x.shape)}")
        return apply_rotary(x, positions, base=self.base, interleaved=self.interleaved)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}, interleaved={self.interleaved}"
