"""Running a Triton backend through Triton's interpreter on the CPU, or compiled on a GPU, within one test."""

import sys

import pytest


def use_triton(monkeypatch, op, modules: tuple[str, ...], *, interpret: bool) -> None:
    """Make ``op``'s triton backend run interpreted (``interpret=True``, on CPU tensors) or compiled, for one test.

    Triton decides when a function is decorated whether it is interpreted: ``triton.jit`` reads
    ``TRITON_INTERPRET`` then, for the backend's kernels and for Triton's own language functions
    (``tl.sum``, ``tl.zeros``, ...), decorated when triton was first imported. So for the interpreter the
    variable is set and every compiled language function is swapped for an interpreted one; for the GPU a
    language imported under the interpreter skips the test. Either way the kernel ``modules`` are
    imported afresh (dropped from ``sys.modules``; the backend's loader imports them again) and the
    choice of backend is left to the test (no ``SSMLAB_*BACKEND`` variable). Everything is restored after
    the test by ``monkeypatch``.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    monkeypatch.delenv(op.env_var, raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    if interpret:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        swapped = {}
        for module in (tl, tl.core, tl.standard, tl.math):
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    swapped.setdefault(value, InterpretedFunction(value.fn))
                    monkeypatch.setattr(module, name, swapped[value])
    else:
        if isinstance(tl.standard.zeros, InterpretedFunction):
            pytest.skip("TRITON_INTERPRET=1 was set when triton was imported: its language is interpreted")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(op.backends["triton"], "fn", None)
