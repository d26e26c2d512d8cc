"""No mixer imports another mixer, and no layer imports a mixer (DESIGN.md: a mixer is assembled
from ``layers/`` and ``ops/``; an edit to one mixer must not silently change another).

The check reads the source with ``ast``: every ``import``, ``from ... import`` (relative ones
resolved) and ``importlib.import_module`` / ``__import__`` call with a literal name. Of
``ssmlab.mixers`` only ``ssmlab.mixers.base`` (the contract, not a mixer) may be imported;
wrappers that build other mixers (bidirectional, cross-scan) find them with ``registry.get``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ssmlab.layers
import ssmlab.mixers

ALLOWED = ("ssmlab.mixers.base",)


def imported_names(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``source``, a module of ``package``, imports; ``from m import a``
    gives ``m.a``, so that importing a mixer class from the package shows as that name."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            names += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                names.append((node.lineno, node.args[0].value))
    return sorted(names)


def mixer_imports(source: str, package: str) -> list[str]:
    """The imports of ``source`` that reach a mixer module (anything in ``ssmlab.mixers`` but its base)."""
    bad = []
    for line, name in imported_names(source, package):
        inside = name == "ssmlab.mixers" or name.startswith("ssmlab.mixers.")
        allowed = any(name == ok or name.startswith(ok + ".") for ok in ALLOWED)
        if inside and not allowed:
            bad.append(f"line {line}: {name}")
    return bad


def _files(package):
    root = Path(package.__file__).parent
    return [pytest.param(path, package.__name__, id=f"{package.__name__}.{path.stem}")
            for path in sorted(root.glob("*.py")) if path.name != "__init__.py"]


@pytest.mark.parametrize("path, package", _files(ssmlab.mixers) + _files(ssmlab.layers))
def test_no_module_imports_a_mixer(path, package):
    bad = mixer_imports(path.read_text(), package)
    assert not bad, (f"{path} imports mixer modules ({'; '.join(bad)}): move what it shares into ssmlab/layers/ or "
                     f"ssmlab/ops/, or create the inner mixer with ssmlab.registry.get('mixer', name)")


def test_the_check_sees_every_form_of_import():
    source = "\n".join([
        "from ssmlab.mixers.base import Mixer, State",
        "from ssmlab.mixers.s4d import DiagonalSSM",
        "from .mamba import causal_conv_with_state",
        "from . import s4",
        "from ssmlab.mixers import Mamba",
        "from ssmlab import mixers",
        "import ssmlab.mixers.hyena",
        "import importlib",
        "importlib.import_module('ssmlab.mixers.mega')",
        "from ssmlab.layers.conv import ShortConvolution",
    ])
    assert mixer_imports(source, "ssmlab.mixers") == [
        "line 2: ssmlab.mixers.s4d.DiagonalSSM", "line 3: ssmlab.mixers.mamba.causal_conv_with_state",
        "line 4: ssmlab.mixers.s4", "line 5: ssmlab.mixers.Mamba", "line 6: ssmlab.mixers",
        "line 7: ssmlab.mixers.hyena", "line 9: ssmlab.mixers.mega"]
