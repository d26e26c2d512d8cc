"""GPU benchmark cases of ``linear_attention`` (arXiv 2006.16236) and retention (arXiv 2307.08621) for
``benchmarks/gpu.py``.

Real size: B=4, H=24, K=128, V=64 (SSD's Mamba-2 layer as a linear recurrence), L in {2048, 8192}; plain
linear attention against ``fla.ops.linear_attn.chunk_linear_attn`` (``normalize=False``, scale 1) and retention,
RetNet's decays ``gamma_h = 1 - 2^(-5 - h)``, against ``fla.ops.retention.chunk_retention`` (scale 1), which
uses the same decays.
"""

from __future__ import annotations

import torch

SIZES = {"real": [(4, 2048, 24, 128, 64), (4, 8192, 24, 128, 64)], "tiny": [(1, 40, 2, 8, 4)]}


def _inputs(batch, length, heads, key_dim, value_dim, retention):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)

        def r(*shape, as_dtype=dtype, scale=1.0):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(as_dtype)

        inputs = {"q": r(batch, length, heads, key_dim, scale=key_dim ** -0.5), "k": r(batch, length, heads, key_dim),
                  "v": r(batch, length, heads, value_dim),
                  "initial_state": r(batch, heads, key_dim, value_dim, as_dtype=torch.float32)}
        if retention:
            h = torch.arange(heads, device=device, dtype=torch.float32)
            inputs["log_decay"] = torch.log1p(-torch.pow(2.0, -5.0 - h))
        return {k: v.requires_grad_(True) for k, v in inputs.items()}

    return make


def _ours(backend):
    def run(q, k, v, initial_state, log_decay=None):
        from ssmlab.ops import linear_attention

        return linear_attention(q, k, v, log_decay=log_decay, initial_state=initial_state.to(q.dtype),
                                return_final_state=True, backend=backend)

    return run


def _fla_linear_attn(q, k, v, initial_state):
    from fla.ops.linear_attn import chunk_linear_attn

    return chunk_linear_attn(q, k, v, scale=1.0, initial_state=initial_state, output_final_state=True,
                             normalize=False)


def _fla_retention(q, k, v, initial_state, log_decay):
    from fla.ops.retention import chunk_retention

    return chunk_retention(q, k, v, scale=1.0, initial_state=initial_state, output_final_state=True)


def _bytes(batch, length, heads, key_dim, value_dim, itemsize):
    """q, k, v read and y written in the input dtype; the initial and final states in float32."""
    return (itemsize * batch * length * heads * (2 * key_dim + 2 * value_dim)
            + 4 * 2 * batch * heads * key_dim * value_dim)


def cases(size: str) -> list[dict]:
    """The benchmark cases at ``size``, "real" (the issue's sizes) or "tiny" (seconds under the interpreter).
    ``bytes`` is for bf16 inputs (2 bytes an element)."""
    out = []
    for s in SIZES[size]:
        label = "B={} L={} H={} K={} V={}".format(*s)
        for retention, name, fla in ((False, "linear_attention", _fla_linear_attn),
                                     (True, "retention", _fla_retention)):
            out.append({"name": f"{name} {label}", "inputs": _inputs(*s, retention),
                        "run": {"triton": _ours("triton"), "torch": _ours("torch"), "fla": fla},
                        "bytes": _bytes(*s, itemsize=2)})
    return out


