"""Backend selection for ops: one reference, several fast paths.

Every op (``linear_scan``, ``selective_scan``, ``ssd``, ...) is an :class:`Op`
with named backends. A call picks its backend in this order:

1. the ``backend=`` argument of the call;
2. the environment variable ``SSMLAB_<OP>_BACKEND`` (for example
   ``SSMLAB_SELECTIVE_SCAN_BACKEND=reference``), then ``SSMLAB_BACKEND``;
3. the available backend with the highest priority for the input's device.

A backend asked for by name (argument or environment) that does not exist or
is not available raises an error; there is never a silent fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass
class Backend:
    name: str
    fn: Callable
    priority: int
    available: Callable[[torch.device], bool]
    loader: Callable[[], Callable] | None = None


def _always(device: torch.device) -> bool:
    return True


class Op:
    """A named operation with a registry of interchangeable implementations."""

    def __init__(self, name: str):
        self.name = name
        self.backends: dict[str, Backend] = {}

    @property
    def env_var(self) -> str:
        return f"SSMLAB_{self.name.upper()}_BACKEND"

    def register(self, name: str, *, priority: int = 0, available: Callable[[torch.device], bool] = _always):
        """Decorator: register ``fn`` as backend ``name`` of this op."""

        def decorator(fn: Callable) -> Callable:
            self.backends[name] = Backend(name, fn, priority, available)
            return fn

        return decorator

    def register_lazy(self, name: str, loader: Callable[[], Callable], *, priority: int = 0,
                      available: Callable[[torch.device], bool] = _always) -> None:
        """Register a backend whose module is imported only when first used (Triton kernels)."""
        self.backends[name] = Backend(name, None, priority, available, loader)

    def resolve(self, backend: str | None = None, device: torch.device | str = "cpu") -> Callable:
        device = torch.device(device)
        requested = backend or os.environ.get(self.env_var) or os.environ.get("SSMLAB_BACKEND")
        if requested:
            if requested not in self.backends:
                raise BackendUnavailableError(
                    f"{self.name}: no backend named {requested!r}; registered backends: "
                    f"{', '.join(sorted(self.backends))}"
                )
            chosen = self.backends[requested]
            if not chosen.available(device):
                raise BackendUnavailableError(
                    f"{self.name}: backend {requested!r} is not available for device {device} here"
                )
        else:
            usable = [b for b in self.backends.values() if b.available(device)]
            if not usable:
                raise BackendUnavailableError(f"{self.name}: no backend available for device {device}")
            chosen = max(usable, key=lambda b: b.priority)
        if chosen.fn is None:
            chosen.fn = chosen.loader()
        return chosen.fn

    def available_backends(self, device: torch.device | str = "cpu") -> list[str]:
        device = torch.device(device)
        return sorted(n for n, b in self.backends.items() if b.available(device))

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={sorted(self.backends)})"
