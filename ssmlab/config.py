"""Typed dataclass configs. Unknown keys are an error that lists the valid ones."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config with an unknown key or a value of the wrong type."""


def from_dict(cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and values of the wrong type."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        values[key] = _coerce(cls.__name__, key, value, hints[key])
    return cls(**values)


def constructor_options(cls: type) -> dict[str, Any]:
    """The keyword options of ``cls``'s constructor with their annotations (``Any`` where there is
    none or it does not resolve here), following ``**kwargs`` up ssmlab's base classes: a subclass
    that passes ``**kwargs`` to its base's ``__init__`` takes the base's options too."""
    options: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if not klass.__module__.startswith("ssmlab"):
            break
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not resolve here: the constructor checks that value
            hints = {}
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                options.setdefault(p.name, hints.get(p.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return options


def check_options(values: Mapping[str, Any], valid: Mapping[str, Any], owner: str, *, types: bool = True) -> None:
    """Reject options of ``values`` that are not in ``valid`` (name -> annotation, e.g. from
    :func:`constructor_options`), in one line that lists the valid ones, and with ``types``
    type-check the others against their annotations (for values read from a config file), before
    anything is built. A ``ConfigError``, a ``ValueError``."""
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{owner}: bad options: unknown {', '.join(unknown)}; valid options: "
                          f"{', '.join(sorted(valid)) or 'none'}")
    for key, value in values.items() if types else ():
        _coerce(owner, key, value, valid[key])


def _coerce(owner: str, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(owner, key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{owner}.{key}: {value!r} does not match {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return origin(_coerce(owner, key, v, inner) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{owner}.{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is a number in every other notation.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{owner}.{key}: expected float, got str {value!r}") from None
    if isinstance(hint, type):
        if hint is not bool and isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected {hint.__name__}, got {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{owner}.{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
