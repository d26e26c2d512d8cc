"""GPU benchmark cases of ``causal_conv``, the short convolution of Mamba (arXiv 2312.00752) and Mamba-2
(arXiv 2405.21060), for ``benchmarks/gpu.py``.

Real size: Mamba-2 1.3B's convolution over x, B and C (d_model 2048: 2 * 2048 + 2 * 128 = 4352 channels),
K=4 with bias and SiLU, B=4, L in {2048, 8192}, the final state returned. fla's counterpart is
``fla.modules.conv.causal_conv1d`` (its Triton backend), whose state holds K inputs rather than K - 1.
"""

from __future__ import annotations

import torch

SIZES = {"real": [(4, 2048, 4352, 4), (4, 8192, 4352, 4)], "tiny": [(1, 40, 24, 4)]}


def _inputs(batch, length, channels, width):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)

        def r(*shape, dt=dtype, scale=1.0):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

        inputs = {"x": r(batch, length, channels), "weight": r(channels, width, dt=torch.float32, scale=0.5),
                  "bias": r(channels, dt=torch.float32)}
        return {k: v.requires_grad_(True) for k, v in inputs.items()}

    return make


def _ours(backend):
    def run(x, weight, bias):
        from ssmlab.ops import causal_conv

        return causal_conv(x, weight, bias, activation="silu", return_final_state=True, backend=backend)

    return run


def _fla(x, weight, bias):
    try:
        from fla.modules.conv import causal_conv1d
    except ImportError:
        from fla.modules.convolution import causal_conv1d

    return causal_conv1d(x, weight.to(x.dtype), bias.to(x.dtype), activation="silu", output_final_state=True,
                         backend="triton")


def _bytes(batch, length, channels, width, itemsize):
    """x read and y written in the input dtype, the weight and bias read in float32, the state written."""
    return itemsize * (2 * batch * length * channels + batch * channels * (width - 1)) + 4 * channels * (width + 1)


def cases(size: str) -> list[dict]:
    """The benchmark cases at ``size``, "real" (the issue's sizes) or "tiny" (seconds under the interpreter).
    ``bytes`` is for bf16 inputs (2 bytes an element)."""
    return [{"name": "causal_conv B={} L={} D={} K={}".format(*s), "inputs": _inputs(*s),
             "run": {"triton": _ours("triton"), "torch": _ours("torch"), "fla": _fla},
             "bytes": _bytes(*s, itemsize=2)} for s in SIZES[size]]
