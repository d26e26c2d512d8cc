"""One registry for everything that can be named from a config or the CLI.

Mixers, models and tasks register themselves with a decorator in the file that
defines them::

    @register("mixer", "s4d", description="Diagonal SSM", paper="2206.11893")
    class S4D(Mixer): ...

A mixer also says what its inputs are: ``inputs="sequence"`` (the default, any
length) or ``inputs="image"`` for a mixer over a 2-D grid that needs the
``image_shape`` an image task gives (S4ND, VMamba's cross-scan); experiments run
image mixers on image tasks only. Test fixtures (the conformance variants of a
mixer) are not registered: they live in ``tests/mixers/variants.py``.

Looking a name up that was never registered raises a ``KeyError`` that lists
the names that exist, so a typo on the command line is easy to correct.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("mixer", "model", "task")
MIXER_INPUTS = ("sequence", "image")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    description: str = ""
    paper: str = ""
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


class UnknownNameError(KeyError):
    """A name that is not in the registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(kind: str, name: str, *, description: str = "", paper: str = "", **extra: Any) -> Callable:
    """Class or function decorator that records ``obj`` under ``(kind, name)``.

    ``description`` is the one line ``ssmlab list`` prints; ``paper`` is the
    arXiv id of the paper the thing comes from. A mixer takes one more keyword,
    ``inputs`` (one of ``MIXER_INPUTS``, default ``"sequence"``); other kinds keep
    any keywords in ``Entry.extra`` (tasks: ``source``, ``size``, ``seq_len``, ``metric``).
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    if kind == "mixer":
        unknown = sorted(set(extra) - {"inputs"})
        if unknown:
            raise TypeError(f"register('mixer', {name!r}): unknown keyword(s) {unknown}; a mixer registers "
                            f"description, paper and inputs only (its test variants go in tests/mixers/variants.py)")
        extra.setdefault("inputs", "sequence")
        if extra["inputs"] not in MIXER_INPUTS:
            raise ValueError(f"register('mixer', {name!r}): inputs must be one of {MIXER_INPUTS}, "
                             f"got {extra['inputs']!r}")

    def decorator(obj: Any) -> Any:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing.obj is not obj:
            raise ValueError(f"{kind} {name!r} is already registered by {existing.obj!r}")
        desc = description or (obj.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[kind][name] = Entry(kind, name, obj, desc, paper, dict(extra))
        if isinstance(obj, type):
            obj.registry_name = name
        return obj

    return decorator


def import_submodules(package: str) -> dict[str, type]:
    """Import every module of ``package`` (names starting with ``_`` excepted), so that a new file
    registers what it defines without being listed anywhere; returns the registered classes
    defined in those modules, by class name, for the package to export."""
    path = importlib.import_module(package).__path__
    modules = [importlib.import_module(f"{package}.{info.name}")
               for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name) if not info.name.startswith("_")]
    registered = {id(e.obj) for table in _REGISTRY.values() for e in table.values()}
    return {obj.__name__: obj for module in modules for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__ == module.__name__ and id(obj) in registered}


def _ensure_loaded() -> None:
    # Importing the subpackages runs their @register decorators.
    import ssmlab.mixers  # noqa: F401
    import ssmlab.models  # noqa: F401
    import ssmlab.tasks  # noqa: F401


def get(kind: str, name: str) -> Entry:
    _ensure_loaded()
    table = _REGISTRY[kind]
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(sorted(table)) or '(none)'}"
        )
    return table[name]


def entries(kind: str, pattern: str = "*") -> list[Entry]:
    _ensure_loaded()
    return [e for n, e in sorted(_REGISTRY[kind].items()) if fnmatch.fnmatch(n, pattern)]


def names(kind: str, pattern: str = "*") -> list[str]:
    return [e.name for e in entries(kind, pattern)]
