"""The vision head (patch embedding, scan orders, class tokens: Vim) and the cross-scan mixer (VMamba)."""

from __future__ import annotations

import pytest
import torch

from ssmlab.layers import SCAN_ORDERS, scan_order
from ssmlab.mixers.cross_scan import CrossScan
from ssmlab.models import create_model
from ssmlab.models.heads import head_loss
from tests.utils import assert_close

TINY = {"d_model": 16, "n_layers": 1, "mixer_options": {"d_state": 4}}


def vision(mixer="mamba", **options):
    settings = {"image_shape": (8, 8), "in_channels": 1, "n_classes": 2, **TINY, **options}
    return create_model(mixer, head="vision", **settings)


@pytest.mark.parametrize("options", [
    {},
    {"patch_size": 2, "scan": "hilbert"},
    {"patch_size": 4, "class_token": "first"},
    {"class_token": "middle", "pooling": "mean", "scan": "serpentine"},
    {"class_token": "last", "scan": "diagonal", "position_embedding": False},
    {"in_channels": 3, "image_shape": (4, 6), "patch_size": 2, "class_token": True, "scan": "random"},
])
def test_vision_shapes(options):
    model = vision(**options)
    h, w = model.image_shape
    images = torch.rand(3, h, w, model.in_channels)
    logits = model(images)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    n_patches = (h // model.patch_size) * (w // model.patch_size)
    assert model.embed(images).shape == (3, n_patches + (model.class_token is not None), 16)
    if model.in_channels == 1:
        assert_close(model(images[..., 0]), logits, atol=1e-6, name="(B, H, W) for one channel")


@pytest.mark.parametrize("position, index", [("first", 0), ("middle", 8), ("last", 16), (True, 8)])
def test_class_token_position(position, index):
    model = vision("bi-mamba", patch_size=2, class_token=position)
    assert model.pooling == "cls"
    with torch.no_grad():
        x = model.embed(torch.rand(2, 8, 8, 1))
    assert x.shape[1] == 17
    assert torch.equal(x[:, index], model.cls.expand(2, -1))


@pytest.mark.parametrize("scan", SCAN_ORDERS)
def test_patches_enter_the_backbone_in_scan_order(scan):
    torch.manual_seed(0)
    row = vision(patch_size=2)
    torch.manual_seed(0)
    other = vision(patch_size=2, scan=scan)
    images = torch.rand(2, 8, 8, 1)
    with torch.no_grad():
        assert_close(other.embed(images), row.embed(images)[:, scan_order(scan, 4, 4)], atol=0, name=scan)


def test_vim_sees_the_whole_image_through_its_middle_class_token():
    torch.manual_seed(0)
    model = vision("bi-mamba", class_token="middle", patch_size=2).eval()
    images = torch.rand(1, 8, 8, 1)
    changed = images.clone()
    changed[0, 7, 7] += 1.0
    with torch.no_grad():
        assert (model(changed) - model(images)).abs().max() > 1e-6


def two_class_images(step, n=32):
    """Class 0: the left half brighter; class 1: the right half; plus noise."""
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = 0.5 * torch.rand(n, 8, 8, 1, generator=g)
    left = labels == 0
    images[left, :, :4] += 0.5
    images[~left, :, 4:] += 0.5
    return images, labels


@pytest.mark.parametrize("mixer, options", [
    ("bi-mamba", {"class_token": "middle", "patch_size": 2}),
    ("cross-scan", {"patch_size": 2}),
    ("hydra", {"patch_size": 2, "mixer_options": {"d_state": 4, "headdim": 8, "chunk_size": 8}}),
])
def test_vision_learns_two_classes(mixer, options):
    torch.manual_seed(0)
    model = vision(mixer, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(25):
        images, labels = two_class_images(step)
        loss, _, _ = head_loss("vision", model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"{mixer}: loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("options, option", [
    ({"scan": "spiral"}, "scan"),
    ({"class_token": "end"}, "class_token"),
    ({"pooling": "max"}, "pooling"),
    ({"pooling": "cls"}, "class_token"),
    ({"patch_size": 3}, "patch_size"),
    ({"patch_size": 0}, "patch_size"),
    ({"image_shape": (8,)}, "image_shape"),
    ({"in_channels": 0}, "in_channels"),
])
def test_bad_vision_options_name_the_option(options, option):
    with pytest.raises(ValueError, match=option):
        vision(**options)


def test_bad_vision_inputs_are_clear_errors():
    model = vision(in_channels=3)
    with pytest.raises(ValueError, match="C=3"):
        model(torch.rand(2, 8, 8, 1))
    with pytest.raises(ValueError, match="float images"):
        model(torch.randint(0, 255, (2, 64)))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.rand(2, 8, 8, 3), torch.tensor([64, 64]))


# Cross-scan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("mixer", ["mamba", "s4d"])
def test_cross_scan_is_the_sum_of_four_directional_scans(mixer, shared):
    h, w = 3, 4
    torch.manual_seed(0)
    layer = CrossScan(8, mixer, (h, w), shared=shared, d_state=4, dtype=torch.float64)
    assert len(layer.mixers) == (1 if shared else 4)
    x = torch.randn(2, h * w, 8, dtype=torch.float64)
    row = [i * w + j for i in range(h) for j in range(w)]
    column = [i * w + j for j in range(w) for i in range(h)]
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for k, order in enumerate([row, row[::-1], column, column[::-1]]):
            y = layer.mixers[0 if shared else k](x[:, order])
            # Position t of the scan is patch order[t].
            for t, patch in enumerate(order):
                expected[:, patch] += y[:, t]
        assert_close(layer(x), expected, atol=1e-12, rtol=1e-12, name="cross-scan vs the four scans")


def test_cross_scan_sees_the_whole_image():
    torch.manual_seed(0)
    layer = CrossScan(8, "mamba", (3, 4), d_state=4, dtype=torch.float64)
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    changed = x.clone()
    changed[0, 5] += 1.0
    with torch.no_grad():
        assert bool(((layer(changed) - layer(x)).abs().amax(-1) > 1e-8).all()), "some patch did not see the change"


def test_cross_scan_errors():
    with pytest.raises(ValueError, match="image_shape"):
        CrossScan(8, "mamba")
    with pytest.raises(ValueError, match="causal"):
        CrossScan(8, "bi-mamba", (2, 2))
    with pytest.raises(ValueError, match="causal"):
        CrossScan(8, "s4d", (2, 2), bidirectional=True)
    with pytest.raises(ValueError, match="H\\*W=4"):
        CrossScan(8, "mamba", (2, 2), d_state=4)(torch.randn(1, 5, 8))


def test_vision_fills_in_the_patch_grid_of_grid_mixers():
    model = vision("cross-scan", patch_size=2, image_shape=(8, 4))
    assert model.backbone.layers[0].mixer.image_shape == (4, 2)
    assert model(torch.rand(2, 8, 4, 1)).shape == (2, 2)
    s4nd = vision("s4nd", patch_size=2, mixer_options={"d_state": 4})
    assert s4nd.backbone.layers[0].mixer.image_shape == (4, 4)
    with pytest.raises(ValueError, match="scan"):
        vision("cross-scan", scan="column")
    with pytest.raises(ValueError, match="class_token"):
        vision("cross-scan", class_token="middle")
    with pytest.raises(ValueError, match="image_shape"):
        vision("cross-scan", patch_size=2, mixer_options={"d_state": 4, "image_shape": (8, 8)})
