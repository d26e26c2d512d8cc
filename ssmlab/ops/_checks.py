"""Input validation shared by the ops: every bad input is a ValueError that says what was expected."""

from __future__ import annotations

from numbers import Real
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


def check_heads(op: str, name: str, t: torch.Tensor, last: str, *, step: bool) -> tuple[int, int, tuple]:
    """The first input of a multi-head op, (B, L, H, ``last``), or (B, H, ``last``) for one ``step``:
    returns H, its last size and the leading dimensions (B, L) or (B,) every other input shares."""
    seq = () if step else ("L",)
    check_tensor(name, t, ("B",) + seq + ("H", last), allow_complex=False)
    if not step and t.shape[1] == 0:
        raise ValueError(f"{op} needs at least one position (L >= 1)")
    return t.shape[-2], t.shape[-1], (t.shape[0],) + (() if step else (t.shape[1],))


def check_keys_values(k, v, initial_state, scale, lead: tuple, heads: int, key_dim: int, *, step: bool) -> None:
    """Keys (lead, H, K), values (lead, H, V), a (B, H, K, V) matrix memory and a real ``scale`` or None,
    as the linear-attention family of ops takes them."""
    check_tensor("k", k, lead + (heads, key_dim), allow_complex=False)
    check_tensor("v", v, lead + (heads, "V"), allow_complex=False)
    if initial_state is not None:
        check_tensor("state" if step else "initial_state", initial_state, (lead[0], heads, key_dim, v.shape[-1]),
                     allow_complex=False)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real)):
        raise ValueError(f"scale must be a real number or None, got {scale!r}")


def resolve_scale(scale, key_dim: int) -> float:
    """``K ** -0.5`` when ``scale`` is None (flash-linear-attention's default), else ``scale``."""
    return key_dim ** -0.5 if scale is None else float(scale)

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
