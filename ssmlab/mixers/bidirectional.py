"""Bidirectional wrapper: any causal mixer run forward and on the reversed sequence.

As in Vision Mamba (arXiv 2401.09417), which pairs a forward and a backward
Mamba over image-patch sequences, and the bidirectional SSMs of S4-style
encoders: ``y = combine(f(x), reverse(b(reverse(x))))`` with two mixers of the
same kind and separate parameters. The result sees the whole sequence, so it
is not causal and has no recurrent step.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmlab import registry
from ssmlab.mixers.base import Mixer
from ssmlab.registry import register

COMBINE = ("add", "mean", "concat")


@register("mixer", "bidirectional", description="Any causal mixer run both ways (forward + reversed)",
          paper="2401.09417")
class Bidirectional(Mixer):
    """Two copies of a causal mixer, one reading the sequence backwards.

    Args:
        d_model: width D.
        mixer: the registered causal mixer to wrap ("mamba").
        combine: ``"add"`` the two outputs (default), take their ``"mean"``, or ``"concat"``
            them and project 2D -> D with a linear layer.
        **options: passed to both copies of the mixer.

    There is no state: ``step`` and ``return_state`` raise, since the output at a
    position depends on the positions after it. A right-padded batch (``lengths``)
    reverses each row's real positions only, so the backward copy never reads padding.
    """

    causal = False

    def __init__(self, d_model: int, mixer: str = "mamba", *, combine: str = "add", device=None, dtype=None,
                 **options):
        super().__init__(d_model, device=device, dtype=dtype)
        cls = registry.get("mixer", mixer).obj
        if combine not in COMBINE:
            raise ValueError(f"{self.registry_name}: combine must be one of {COMBINE}, got {combine!r}")
        self.inner, self.combine = mixer, combine
        self.forward_mixer = cls(d_model, **options, device=device, dtype=dtype)
        if not self.forward_mixer.causal:
            raise ValueError(f"{self.registry_name}: the wrapped mixer {mixer!r} with options {options} must be causal")
        self.backward_mixer = cls(d_model, **options, device=device, dtype=dtype)
        self.proj = nn.Linear(2 * d_model, d_model, **self.factory) if combine == "concat" else None

    def _forward(self, x, state, return_state):
        y_f = self.forward_mixer(x)
        y_b = self.backward_mixer(x.flip(1)).flip(1)
        if self.combine == "concat":
            return self.proj(torch.cat([y_f, y_b], dim=-1)), None
        y = y_f + y_b
        return (y / 2 if self.combine == "mean" else y), None

    def _forward_varlen(self, x, state, return_state, lengths):
        # Row b read backwards over its first n_b positions; the padding stays after them.
        t = torch.arange(x.shape[1], device=x.device)
        order = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, L), its own inverse
        reverse = lambda v: v.gather(1, order[..., None].expand_as(v))  # noqa: E731
        y_f = self.forward_mixer(x, lengths=lengths)
        y_b = reverse(self.backward_mixer(reverse(x), lengths=lengths))
        if self.combine == "concat":
            return self.proj(torch.cat([y_f, y_b], dim=-1)), None
        y = y_f + y_b
        return (y / 2 if self.combine == "mean" else y), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixer={self.inner!r}, combine={self.combine!r}"


@register("mixer", "bi-mamba", description="Bidirectional Mamba (Vision Mamba)", paper="2401.09417")
class BiMamba(Bidirectional):
    """:class:`Bidirectional` around :class:`~ssmlab.mixers.mamba.Mamba` (Vim, arXiv 2401.09417).

    By default this is Vim's ``bimamba_type="v2"`` layer, as in its released models
    (``if_divide_out=True``): one input projection and one output projection serve both
    directions, each direction has its own convolution, ``x_proj``, ``dt_proj``, ``A_log`` and
    ``D``, and the two gated SSM outputs are averaged before the output projection. Here the
    backward copy shares the forward copy's ``in_proj`` and ``out_proj`` modules and
    ``combine="mean"``, which by linearity is the same map (the output bias, if any, is added
    once). ``shared_projections=False`` keeps two whole Mamba blocks, as the generic wrapper does.
    """

    def __init__(self, d_model: int, *, combine: str = "mean", shared_projections: bool = True, device=None,
                 dtype=None, **options):
        super().__init__(d_model, "mamba", combine=combine, device=device, dtype=dtype, **options)
        self.shared_projections = bool(shared_projections)
        if self.shared_projections:
            self.backward_mixer.in_proj = self.forward_mixer.in_proj
            self.backward_mixer.out_proj = self.forward_mixer.out_proj


@register("mixer", "bi-mamba2", description="Bidirectional Mamba-2", paper="2401.09417")
class BiMamba2(Bidirectional):
    """:class:`Bidirectional` around :class:`~ssmlab.mixers.mamba2.Mamba2`."""

    def __init__(self, d_model: int, *, combine: str = "add", device=None, dtype=None, **options):
        super().__init__(d_model, "mamba2", combine=combine, device=device, dtype=dtype, **options)
