"""Every registered mixer has test variants (tests/mixers/variants.py), and image mixers say so."""

from __future__ import annotations

import inspect

import pytest

from ssmlab import registry
from tests.mixers.variants import VARIANTS, MissingVariantsError, variants


def test_every_registered_mixer_has_variants():
    missing = [name for name in registry.names("mixer") if name not in VARIANTS]
    assert not missing, (f"mixers without test variants: {missing}; add an entry for each to VARIANTS in "
                         f"tests/mixers/variants.py (a list of option dicts; [{{}}] for the defaults)")
    stale = sorted(set(VARIANTS) - set(registry.names("mixer")))
    assert not stale, f"VARIANTS in tests/mixers/variants.py names mixers that are not registered: {stale}"
    assert all(VARIANTS[name] and all(isinstance(v, dict) for v in VARIANTS[name]) for name in VARIANTS)


def test_a_mixer_without_variants_is_a_clear_error():
    with pytest.raises(MissingVariantsError, match="'new-mixer'.*add .* to VARIANTS in tests/mixers/variants.py"):
        variants("new-mixer")


@pytest.mark.parametrize("entry", registry.entries("mixer"), ids=lambda e: e.name)
def test_image_mixers_declare_it_and_their_variants_give_a_grid(entry):
    """``inputs="image"`` exactly for the mixers whose constructor takes the grid (the vision head gives
    ``image_shape`` to those), and each of their test variants sets one."""
    takes_grid = "image_shape" in inspect.signature(entry.obj.__init__).parameters
    assert (entry.extra["inputs"] == "image") == takes_grid, (
        f"{entry.name}: register it with inputs='image' exactly when its constructor takes image_shape")
    assert all(("image_shape" in options) == takes_grid for options in VARIANTS.get(entry.name, []))
