"""Backend selection for ops: one reference, several fast paths.

Every op (``linear_scan``, ``selective_scan``, ``ssd``, ...) is an :class:`Op`
with named backends. A call picks its backend in this order:

1. the ``backend=`` argument of the call;
2. the environment variable ``SSMLAB_<OP>_BACKEND`` (for example
   ``SSMLAB_SELECTIVE_SCAN_BACKEND=reference``), then ``SSMLAB_BACKEND``;
3. the available backend with the highest priority for the input's device
   (a ``triton`` backend is chosen this way only on CUDA tensors; on the CPU it
   runs through Triton's interpreter when asked for by name with
   ``TRITON_INTERPRET=1``, which is how the tests check it).

A backend asked for by name (argument or environment) that does not exist or
is not available raises an error; there is never a silent fallback.

Every op answers to one vocabulary (:data:`VOCABULARY`): ``reference`` (the
specification), ``torch`` (the best pure-PyTorch path, CPU and GPU) and, once it
has one, ``triton``; so ``SSMLAB_BACKEND=torch`` means the same for every op.
Op-specific variants keep their own names beside these (``associative`` for
``linear_scan``, ``quadratic`` for ``ssd``), and a name that is another name
for a backend (``chunked``, what ``torch`` runs for ``linear_scan`` and ``ssd``)
is registered as an alias of it. A ``numba`` backend (compiled CPU loops, for
``selective_scan``) is an optional accelerator: available only where Numba is
installed, and then the default on CPU tensors. ``SSMLAB_BACKEND`` is meant for the shared
names, since an op may call other ops, which read it too; an op-specific variant
is chosen with the op's own variable (``SSMLAB_SSD_BACKEND=quadratic``) or
``backend=``. Every op made with :class:`Op` is listed by :func:`registered_ops`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch


VOCABULARY = ("reference", "torch", "triton")

_OPS: dict[str, "Op"] = {}


def registered_ops() -> list["Op"]:
    """Every op made with ``Op(name)``, by name."""
    return [_OPS[name] for name in sorted(_OPS)]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass
class Backend:
    name: str
    fn: Callable
    priority: int
    available: Callable[[torch.device], bool]
    loader: Callable[[], Callable] | None = None
    alias_of: str | None = None  # another name for that backend; never chosen by priority
    auto_devices: tuple[str, ...] | None = None  # device types on which priority may choose it; None: all


def triton_available(device: torch.device) -> bool:
    """Triton can run here: on a CUDA device, or on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def numba_installed() -> bool:
    """Numba can be imported here; looked up once (``find_spec`` takes about 35 µs, and every call of an op with a
    ``numba`` backend asks)."""
    return importlib.util.find_spec("numba") is not None


def numba_available(device: torch.device) -> bool:
    """Numba is importable and the tensors are on the CPU: the availability of every ``numba`` backend."""
    return device.type == "cpu" and numba_installed()


def _always(device: torch.device) -> bool:
    return True


class Op:
    """A named operation with a registry of interchangeable implementations.

    ``register=False`` keeps the op out of :func:`registered_ops` (a throwaway op in a test).
    """

    def __init__(self, name: str, *, register: bool = True):
        self.name = name
        self.backends: dict[str, Backend] = {}
        if register:
            if name in _OPS:
                raise ValueError(f"an op named {name!r} already exists: {_OPS[name]!r}")
            _OPS[name] = self

    @property
    def env_var(self) -> str:
        return f"SSMLAB_{self.name.upper()}_BACKEND"

    def register(self, name: str, *, priority: int = 0, available: Callable[[torch.device], bool] = _always,
                 aliases: tuple[str, ...] = ()):
        """Decorator: register ``fn`` as backend ``name`` of this op, also answering to ``aliases``."""

        def decorator(fn: Callable) -> Callable:
            self._add(Backend(name, fn, priority, available), aliases)
            return fn

        return decorator

    def register_lazy(self, name: str, loader: Callable[[], Callable], *, priority: int = 0,
                      available: Callable[[torch.device], bool] = _always, aliases: tuple[str, ...] = ()) -> None:
        """Register a backend whose module is imported only when first used (Triton kernels)."""
        self._add(Backend(name, None, priority, available, loader), aliases)

    def register_triton(self, loader: Callable[[], Callable], *, priority: int = 100) -> None:
        """Register the ``triton`` backend: imported on first use, chosen by default on CUDA tensors when Triton
        is importable, and on CPU tensors only when asked for by name under ``TRITON_INTERPRET=1``."""
        self._add(Backend("triton", None, priority, triton_available, loader, auto_devices=("cuda",)), ())

    def _add(self, backend: Backend, aliases: tuple[str, ...]) -> None:
        self.backends[backend.name] = backend
        for alias in aliases:
            self.backends[alias] = Backend(alias, backend.fn, backend.priority, backend.available, backend.loader,
                                           alias_of=backend.name, auto_devices=backend.auto_devices)

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
            usable = [b for b in self.backends.values() if b.alias_of is None and b.available(device)
                      and (b.auto_devices is None or device.type in b.auto_devices)]
            if not usable:
                raise BackendUnavailableError(f"{self.name}: no backend available for device {device}")
            # The first of the highest priority, as max(key=) would pick, in a loop that
            # torch.compile traces (it has no handler for max's key argument).
            chosen = usable[0]
            for candidate in usable[1:]:
                if candidate.priority > chosen.priority:
                    chosen = candidate
        if chosen.fn is None:
            chosen.fn = chosen.loader()
        return chosen.fn

    def available_backends(self, device: torch.device | str = "cpu") -> list[str]:
        device = torch.device(device)
        return sorted(n for n, b in self.backends.items() if b.available(device))

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={sorted(self.backends)})"
