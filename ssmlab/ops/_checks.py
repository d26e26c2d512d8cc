"""Input validation shared by the ops: every bad input is a ValueError that says what was expected."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def _fmt(shape: Sequence) -> str:
    return str(tuple(shape)).replace("'", "")


def check_tensor(name: str, t: torch.Tensor, expected: Sequence, *, allow_complex: bool = True,
                 allow_integer: bool = False) -> None:
    """Check ``t`` against ``expected``: a sequence whose items are ints (exact size) or
    strings (symbolic names, any size). Raises ``ValueError`` naming the expected shape."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {_fmt(expected)}, got {type(t).__name__}")
    if t.dim() != len(expected):
        raise ValueError(f"{name} must have shape {_fmt(expected)} ({len(expected)} dims), "
                         f"got shape {tuple(t.shape)} ({t.dim()} dims)")
    for i, (want, got) in enumerate(zip(expected, t.shape)):
        if isinstance(want, int) and want != got:
            raise ValueError(f"{name} must have shape {_fmt(expected)}, got {tuple(t.shape)} "
                             f"(dim {i} is {got}, expected {want})")
    if not allow_integer and not (t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
    if not allow_complex and t.is_complex():
        raise ValueError(f"{name} must be real, got complex dtype {t.dtype}")


def check_sequence(name: str, t: torch.Tensor, *, allow_complex: bool = True) -> None:
    """``t`` must be a floating or complex tensor of shape (B, L, ...)."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape (B, L, ...), got {got}")
    check_tensor(name, t, ("B", "L") + ("...",) * (t.dim() - 2), allow_complex=allow_complex)



def check_values(ok: torch.Tensor, message: str, detail: Callable[[], str] | None = None) -> None:
    """Raise ``ValueError(message + detail())`` unless every element of the boolean tensor ``ok``
    is true; ``detail`` (optional) quotes the offending values and runs only on failure.

    Under ``torch.compile`` and ``torch.export`` the values are not on the host while tracing:
    the check stays in the graph as an assertion, which raises ``RuntimeError(message)``.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), message)
    elif not bool(ok.all()):
        raise ValueError(message + (detail() if detail is not None else ""))
