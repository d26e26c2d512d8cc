"""The registry: what a mixer may register, and modules that register themselves without being listed."""

from __future__ import annotations

import sys

import pytest

import ssmlab
from ssmlab import registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables as copies, restored afterwards, so a test may register throwaway names."""
    for kind in registry.KINDS:
        monkeypatch.setitem(registry._REGISTRY, kind, dict(registry._REGISTRY[kind]))


def test_mixers_register_no_test_fixtures(scratch_registry):
    for fixture in ({"variants": [{}]}, {"fixed_length": 16}):
        with pytest.raises(TypeError, match="unknown keyword.*tests/mixers/variants.py"):
            registry.register("mixer", "fixture-mixer", **fixture)(type("FixtureMixer", (), {}))
    with pytest.raises(ValueError, match="inputs must be one of"):
        registry.register("mixer", "fixture-mixer", inputs="video")(type("FixtureMixer", (), {}))
    registry.register("mixer", "plain-mixer")(type("PlainMixer", (), {}))
    assert registry.get("mixer", "plain-mixer").extra == {"inputs": "sequence"}
    assert registry.get("mixer", "s4nd").extra == {"inputs": "image"}


def test_a_new_module_in_a_package_registers_itself(tmp_path, monkeypatch, scratch_registry):
    package = tmp_path / "newpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mine.py").write_text(
        "from ssmlab.registry import register\n\n\n"
        "@register('mixer', 'dropped-in')\nclass DroppedIn:\n    pass\n\n\nclass Helper:\n    pass\n")
    (package / "_private.py").write_text("raise RuntimeError('modules starting with _ are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "newpkg", raising=False)
    monkeypatch.delitem(sys.modules, "newpkg.mine", raising=False)
    classes = registry.import_submodules("newpkg")
    assert list(classes) == ["DroppedIn"]
    assert registry.get("mixer", "dropped-in").obj is classes["DroppedIn"]


@pytest.mark.parametrize("package, kind", [("ssmlab.mixers", "mixer"), ("ssmlab.tasks", "task")])
def test_every_registered_class_is_exported_by_its_package(package, kind):
    module = sys.modules[package]
    for entry in registry.entries(kind):
        if isinstance(entry.obj, type) and entry.obj.__module__.startswith(package + "."):
            assert getattr(module, entry.obj.__name__) is entry.obj and entry.obj.__name__ in module.__all__
    assert ssmlab.Attention is ssmlab.mixers.Attention and ssmlab.Mixer is ssmlab.mixers.Mixer
