"""Image classification with any sequence mixer: patches, a scan order, the backbone, pooling.

The image is cut into ``patch_size`` x ``patch_size`` patches embedded by one strided
convolution (ViT's patch embedding, arXiv 2010.11929, also used by Vision Mamba and
VMamba), given learned position embeddings, and read as a sequence in a chosen scan
order (:func:`ssmlab.layers.scan_order`). Vision Mamba (Vim, arXiv 2401.09417) is this
model with the ``bi-mamba`` mixer, row order and a class token in the middle of the
sequence (``class_token="middle"``, ``pooling="cls"``); VMamba's cross-scan (arXiv
2401.10166) is the ``cross-scan`` mixer over the grid of patches, whose ``image_shape``
the model fills in. Any other bidirectional sequence mixer reads the patches the same way,
e.g. ``hydra`` (arXiv 2407.09941, which its paper evaluates on ImageNet in place of ViT's attention).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ssmlab import registry
from ssmlab.layers.scan import SCAN_ORDERS, scan_order
from ssmlab.models.backbone import Backbone
from ssmlab.models.heads import ClassifierObjective, PretrainedMixin
from ssmlab.registry import register

CLASS_TOKEN_POSITIONS = ("first", "middle", "last")


def _takes_image_shape(name: str) -> bool:
    """Whether mixer ``name`` works over a fixed grid of patches (it takes ``image_shape``)."""
    return "image_shape" in inspect.signature(registry.get("mixer", name).obj.__init__).parameters


@register("model", "vision", description="Image classifier: patch embedding, scan order, backbone, pooling (Vim)",
          paper="2401.09417")
class VisionClassifier(ClassifierObjective, PretrainedMixin, nn.Module):
    """Images (B, H, W, C) float in [0, 1] -> logits (B, n_classes).

    Only real-valued images are taken (also (B, H, W) when ``in_channels == 1``);
    pixel-token sequences (B, H * W) of integer ids go to the ``classify`` head instead.

    Args:
        mixer, d_model, n_layers, mlp, mlp_hidden, mixer_options, norm_eps: see :class:`Backbone`.
        image_shape: (H, W) of the input images. Required.
        n_classes: number of classes. Required.
        in_channels: channels C (default 3).
        patch_size: side of the square patches (default 1: one pixel per position); must
            divide H and W. The sequence has ``(H / patch_size) * (W / patch_size)`` patches.
        scan: the order of the patches in the sequence, one of ``SCAN_ORDERS`` (default
            ``"row"``); see :func:`ssmlab.layers.scan_order`.
        scan_seed: seed of the ``"random"`` scan (default 0).
        class_token: ``False`` (default) for none, or where to insert one learned class token:
            ``"first"`` (ViT), ``"middle"`` (Vim's choice, after the first ``L // 2`` patches),
            ``"last"`` (where a causal mixer has read every patch); ``True`` means ``"middle"``.
        pooling: ``"cls"`` (the class token's features; the default with a class token) or
            ``"mean"`` over the patches (the default without one).
        position_embedding: add a learned position embedding to each patch, as ViT and Vim
            (default True).

    Mixers over a fixed grid (``cross-scan``, ``s4nd``) get ``image_shape`` set to the grid
    of patches, and need the row scan and no class token, since they read the sequence
    as that grid in row-major order.
    """

    def __init__(self, mixer: str | list[str], *, d_model: int, n_layers: int, image_shape: tuple[int, int],
                 n_classes: int, in_channels: int = 3, patch_size: int = 1, scan: str = "row", scan_seed: int = 0,
                 class_token: bool | str = False, pooling: str | None = None, position_embedding: bool = True,
                 mixer_options: dict | None = None, device=None, dtype=None, **backbone_options):
        super().__init__()
        if image_shape is None or len(image_shape) != 2 or not all(isinstance(n, int) and n >= 1
                                                                    for n in image_shape):
            raise ValueError(f"image_shape must be (H, W) of positive ints, got {image_shape!r}")
        for option, value in (("in_channels", in_channels), ("n_classes", n_classes), ("patch_size", patch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, got {value!r}")
        if image_shape[0] % patch_size or image_shape[1] % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide both sides of image_shape {tuple(image_shape)}")
        if scan not in SCAN_ORDERS:
            raise ValueError(f"scan must be one of {SCAN_ORDERS}, got {scan!r}")
        if class_token is True:
            class_token = "middle"
        if class_token not in (False, None) + CLASS_TOKEN_POSITIONS:
            raise ValueError(f"class_token must be False, True or one of {CLASS_TOKEN_POSITIONS}, got {class_token!r}")
        class_token = class_token or None
        pooling = pooling or ("cls" if class_token else "mean")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if pooling == "cls" and class_token is None:
            raise ValueError("pooling='cls' needs a class token: set class_token to 'first', 'middle' or 'last'")
        self.image_shape, self.in_channels, self.patch_size = tuple(image_shape), in_channels, patch_size
        self.grid = (image_shape[0] // patch_size, image_shape[1] // patch_size)
        self.scan, self.class_token, self.pooling = scan, class_token, pooling
        n_patches = self.grid[0] * self.grid[1]
        self.class_position = {"first": 0, "middle": n_patches // 2, "last": n_patches, None: None}[class_token]
        mixer_options = self._grid_options(mixer, mixer_options)

        factory = {"device": device, "dtype": dtype}
        self.patch_embed = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size, **factory)
        self.position = nn.Parameter(0.02 * torch.randn(n_patches, d_model, **factory)) if position_embedding \
            else None
        self.cls = nn.Parameter(0.02 * torch.randn(d_model, **factory)) if class_token else None
        self.register_buffer("order", scan_order(scan, *self.grid, seed=scan_seed), persistent=False)
        self.backbone = Backbone(mixer, d_model, n_layers, mixer_options=mixer_options, **factory, **backbone_options)
        self.head = nn.Linear(d_model, n_classes, **factory)

    def _grid_options(self, mixer: str | list[str], mixer_options: dict | None) -> dict | None:
        """``mixer_options`` with ``image_shape`` set to the patch grid for the mixers that take one."""
        names = [mixer] if isinstance(mixer, str) else list(dict.fromkeys(mixer))
        grid_mixers = [name for name in names if _takes_image_shape(name)]
        if not grid_mixers:
            return mixer_options
        if self.scan != "row":
            raise ValueError(f"scan must be 'row' with the grid mixer(s) {grid_mixers}, which read the sequence as "
                             f"the patch grid in row-major order; got scan={self.scan!r}")
        if self.class_token is not None:
            raise ValueError(f"class_token must be False with the grid mixer(s) {grid_mixers}: their sequence is "
                             f"exactly the {self.grid} grid of patches")
        per_name = {mixer: dict(mixer_options or {})} if isinstance(mixer, str) else \
            {name: dict(options) for name, options in (mixer_options or {}).items()}
        for name in grid_mixers:
            options = per_name.setdefault(name, {})
            given = options.setdefault("image_shape", self.grid)
            if tuple(given) != self.grid:
                raise ValueError(f"mixer_options: image_shape {tuple(given)} of {name!r} must be the grid of patches "
                                 f"{self.grid} (image_shape {self.image_shape} / patch_size {self.patch_size})")
        return per_name[mixer] if isinstance(mixer, str) else per_name

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, H, W, C) -> the patch sequence (B, L, D) in scan order, with the class token if any."""
        h, w = self.image_shape
        if images.dim() == 3 and self.in_channels == 1:
            images = images[..., None]
        if images.dim() != 4 or tuple(images.shape[1:]) != (h, w, self.in_channels) or not images.is_floating_point():
            raise ValueError(f"vision inputs must be float images of shape (B, H={h}, W={w}, C={self.in_channels}), "
                             f"got {images.dtype} {tuple(images.shape)}")
        x = self.patch_embed(images.permute(0, 3, 1, 2).to(self.patch_embed.weight.dtype))  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h * w, D), row-major
        if self.position is not None:
            x = x + self.position
        x = x[:, self.order]
        if self.cls is not None:
            p = self.class_position
            x = torch.cat([x[:, :p], self.cls.expand(x.shape[0], 1, -1), x[:, p:]], dim=1)  # (B, h * w + 1, D)
        return x

    def forward(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, H, W, C) -> logits (B, n_classes). ``lengths`` must be None: images are not padded."""
        if lengths is not None:
            raise ValueError("lengths must be None for the vision head: every image has all its patches")
        h, _ = self.backbone(self.embed(images))  # (B, L, D)
        if self.pooling == "cls":
            pooled = h[:, self.class_position]
        elif self.cls is not None:
            p = self.class_position
            pooled = torch.cat([h[:, :p], h[:, p + 1:]], dim=1).mean(1)
        else:
            pooled = h.mean(1)
        return self.head(pooled)
