"""Backbone and heads; :func:`create_model` builds a registered head around a registered mixer."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ssmlab import registry
from ssmlab.models.backbone import Backbone, Block, create_mixer, hybrid_pattern
from ssmlab.models.heads import Forecaster, LanguageModel, RetrievalClassifier, SequenceClassifier, head_loss
from ssmlab.models.vision import VisionClassifier


def create_model(mixer: str | list[str], *, head: str = "lm", d_model: int, n_layers: int, **options) -> nn.Module:
    """Build model ``head`` with ``n_layers`` blocks of ``mixer`` at width ``d_model``.

    Heads: ``"lm"`` (next-token logits), ``"classify"`` (pooled logits), ``"forecast"`` (the next
    ``horizon`` values), ``"retrieval"`` (two-tower document pairs), ``"vision"`` (2-D images with
    patch embedding and a scan order); see :mod:`ssmlab.models.heads` and :mod:`ssmlab.models.vision`.

    ``mixer`` is a registered name, or one name per layer for a hybrid stack
    (e.g. ``hybrid_pattern(8, 4)``). ``options`` go to the head (``vocab_size``,
    ``n_classes``, ``pooling``, ...) and the backbone (``mlp``, ``mlp_hidden``,
    ``mixer_options``, ``norm_eps``).

    ``dtype`` may be a torch dtype or its name (``"bfloat16"``). The arguments are recorded
    on the model as ``model.config``, a dict with ``mixer``, ``head``, ``d_model``,
    ``n_layers`` and the options (``dtype`` by name, ``device`` left out), so that
    ``create_model(**model.config)`` builds the same architecture; this is what
    ``model.save_pretrained`` writes and ``ssmlab.load_pretrained`` reads.
    """
    for name in [mixer] if isinstance(mixer, str) else mixer:
        registry.get("mixer", name)
    cls = registry.get("model", head).obj
    dtype = options.get("dtype")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name (float32, bfloat16, ...)")
        options["dtype"] = getattr(torch, dtype)
    recorded = copy.deepcopy({key: value for key, value in options.items() if key not in ("device", "dtype")})
    model = cls(mixer, d_model=d_model, n_layers=n_layers, **options)
    if options.get("dtype") is not None:
        recorded["dtype"] = str(options["dtype"]).removeprefix("torch.")
    model.config = {"mixer": mixer if isinstance(mixer, str) else list(mixer), "head": head, "d_model": d_model,
                    "n_layers": n_layers, **recorded}
    return model
