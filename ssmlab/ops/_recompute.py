"""Forward by a fast kernel, backward by differentiating the reference recomputed: for the one-position steps."""

from __future__ import annotations

import torch


class KernelWithReferenceGradient(torch.autograd.Function):
    """``fast(*tensors)`` for the outputs; in the backward pass ``reference(*tensors)`` is recomputed from the
    saved inputs and differentiated. ``fast`` and ``reference`` compute the same function of the tensors (None
    stands for an absent optional tensor); their other arguments are bound beforehand (``functools.partial``).
    For kernels with no backward of their own whose reference is cheap (one position of a recurrence)."""

    @staticmethod
    def forward(ctx, fast, reference, *tensors):
        ctx.reference = reference
        ctx.save_for_backward(*tensors)
        return fast(*tensors)

    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])]
        with torch.enable_grad():
            outputs = ctx.reference(*inputs)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
        return (None, None, *(next(grads) if t is not None and t.requires_grad else None for t in inputs))


def run_with_reference_gradient(fast, reference, *tensors):
    """``fast(*tensors)``, differentiable through ``reference`` when a gradient is recorded for any tensor."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return KernelWithReferenceGradient.apply(fast, reference, *tensors)
    return fast(*tensors)
