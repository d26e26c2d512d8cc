"""Typed dataclass configs. Unknown keys are an error that lists the valid ones."""

from __future__ import annotations

import dataclasses
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
