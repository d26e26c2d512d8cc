"""GPU benchmark cases of ``selective_scan`` (Mamba, arXiv 2312.00752) for ``benchmarks/gpu.py``.

Real size: the issue's Mamba layer, B=4, D=1536, N=16, L in {2048, 8192}, with what Mamba passes: B and C
shared by all channels (B, L, N), D, the gate z, delta_bias with softplus, and the final state returned.
flash-linear-attention has no kernel of its own for the selective scan (its Mamba layer calls
``mamba_ssm``'s CUDA kernel), so there is no fla column.
"""

from __future__ import annotations

import torch

SIZES = {"real": [(4, 2048, 1536, 16), (4, 8192, 1536, 16)], "tiny": [(1, 40, 8, 4)]}


def _inputs(batch, length, channels, n_state):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)

        def r(*shape, dt=dtype, scale=1.0):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

        inputs = {"u": r(batch, length, channels), "delta": r(batch, length, channels, scale=0.5),
                  "A": -torch.rand(channels, n_state, generator=g, device=device) * 4,
                  "B": r(batch, length, n_state), "C": r(batch, length, n_state),
                  "D": r(channels, dt=torch.float32), "z": r(batch, length, channels),
                  "delta_bias": r(channels, dt=torch.float32, scale=0.5) - 2.0}
        return {k: v.requires_grad_(True) for k, v in inputs.items()}

    return make


def _ours(backend):
    def run(u, delta, A, B, C, D, z, delta_bias):
        from ssmlab.ops import selective_scan

        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                              return_final_state=True, backend=backend)

    return run


def _bytes(batch, length, channels, n_state, itemsize):
    """u, delta, z, B, C read and y written in the input dtype; A, D, delta_bias read and the final state
    written in float32."""
    return (itemsize * (4 * batch * length * channels + 2 * batch * length * n_state)
            + 4 * (channels * n_state + 2 * channels + batch * channels * n_state))


def cases(size: str) -> list[dict]:
    """The benchmark cases at ``size``, "real" (the issue's sizes) or "tiny" (seconds under the interpreter).
    ``bytes`` is for bf16 inputs (2 bytes an element)."""
    return [{"name": "selective_scan B={} L={} D={} N={}".format(*s), "inputs": _inputs(*s),
             "run": {"triton": _ours("triton"), "torch": _ours("torch"), "fla": None},
             "bytes": _bytes(*s, itemsize=2)} for s in SIZES[size]]
