"""Shared test helpers: a named closeness check that reports the largest difference."""

from __future__ import annotations

import torch

LENGTHS = (1, 2, 63, 64, 65, 1000)


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.detach() - expected.detach()).abs().max().item() if actual.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0,
                 name: str = "value") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise; the failure
    message names the quantity and prints the largest absolute and relative difference."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected).to(actual.dtype) if not actual.is_complex() else torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        if not torch.equal(actual, expected):
            raise AssertionError(f"{name}: boolean tensors differ at {torch.nonzero(actual != expected)[0].tolist()}")
        return
    diff = (actual.detach() - expected.detach()).abs()
    bound = atol + rtol * expected.detach().abs()
    failing = ~(diff <= bound)  # NaN fails too
    if diff.numel() and bool(failing.any()):
        worst = diff.max().item()
        rel = (diff / expected.detach().abs().clamp_min(1e-30)).max().item()
        idx = tuple(int(i) for i in torch.nonzero(failing)[0])
        raise AssertionError(f"{name}: max abs diff {worst:.3e}, max rel diff {rel:.3e} "
                             f"(atol={atol:g}, rtol={rtol:g}); first failure at index {idx}")


def assert_backend_grads_match(run, leaves: dict, *, atol: float = 1e-10, rtol: float = 1e-10) -> None:
    """``run(backend, **inputs) -> (output, final state)`` for the ``reference`` and ``torch`` backends:
    the gradients of ``sum(sin(output)) + sum(state**2)`` with respect to every input in ``leaves``
    agree, and the ``torch`` ones are finite."""
    grads = {}
    for backend in ("reference", "torch"):
        x = {name: t.clone().requires_grad_(True) for name, t in leaves.items()}
        o, state = run(backend, **x)
        (o.sin().sum() + state.square().sum()).backward()
        grads[backend] = {name: t.grad for name, t in x.items()}
    for name in leaves:
        assert torch.isfinite(grads["torch"][name]).all(), name
        assert_close(grads["torch"][name], grads["reference"][name], atol=atol, rtol=rtol, name=f"grad {name}")
