"""The stabilised WKV recurrence, one position at a time: the specification of ``wkv``."""

from __future__ import annotations

import torch

from ssmlab.ops.wkv import EMPTY_EXPONENT, wkv_op


def combine(a1, b1, p1, a2, b2, p2):
    """Sum of two scaled WKV sums ``(a1 e^p1 + a2 e^p2, b1 e^p1 + b2 e^p2)`` rescaled by their
    larger exponent. The exponent is detached: the represented sums do not depend on it, so
    gradients through ``a`` and ``b`` alone are exact."""
    p = torch.maximum(p1, p2).detach()
    e1, e2 = torch.exp(p1 - p), torch.exp(p2 - p)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p


def output(a, b, p, k, v, u):
    """``wkv`` from the state of the positions before (a, b, p), the current key, value and bonus."""
    bonus = u + k
    q = torch.maximum(p, bonus).detach()
    e1, e2 = torch.exp(p - q), torch.exp(bonus - q)
    return (e1 * a + e2 * v) / (e1 * b + e2)


def empty_state(k):
    """The state of no positions, ``(0, 0, EMPTY_EXPONENT)``, each shaped and typed like ``k`` (B, D)."""
    zeros = k.new_zeros(k.shape)
    return zeros, zeros, torch.full_like(zeros, EMPTY_EXPONENT)


def step(k, v, w, u, state):
    """``k``, ``v`` (B, D), state ``(a, b, p)`` -> ``wkv`` (B, D), new state."""
    a, b, p = state
    out = output(a, b, p, k, v, u)
    return out, combine(a, b, p - w, v, torch.ones_like(v), k)


@wkv_op.register("reference", priority=0)
def wkv_reference(k, v, w, u, *, initial_state=None):
    state = empty_state(k[:, 0]) if initial_state is None else initial_state
    outs = []
    for k_t, v_t in zip(k.unbind(1), v.unbind(1)):
        out, state = step(k_t, v_t, w, u, state)
        outs.append(out)
    return torch.stack(outs, dim=1), state
