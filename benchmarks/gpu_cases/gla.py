"""GPU benchmark cases of ``gla`` (arXiv 2312.06635): the triton and torch backends and fla's ``chunk_gla``.

Each case is a dict for ``benchmarks/gpu.py``: ``name``; ``inputs(device, dtype)``, the tensors (q, k, v in
``dtype``, the per-key log forget gates in float32, all requiring gradients); ``run`` with one callable per
implementation returning the output; ``bytes``, what the forward must read and write at least (q, k, v and the gates
read, the output written). Sizes: ``"real"`` is B=4 with H=24 heads of K=V=64 or H=16 heads of K=V=128 at
L in {2048, 8192}; ``"tiny"`` a smoke test that runs under Triton's interpreter in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops import gla


def _inputs(batch, length, heads, dim):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
        q, k, v = (r(batch, length, heads, dim).to(dtype) for _ in range(3))
        # Gates as in GLA's layer: log-sigmoid divided by a temperature of 16 (fla's gate_logit_normalizer).
        log_decay = F.logsigmoid(r(batch, length, heads, dim)) / 16
        return {name: t.requires_grad_(True) for name, t in dict(q=q, k=k, v=v, log_decay=log_decay).items()}

    return make


def _fla(q, k, v, log_decay):
    from fla.ops.gla import chunk_gla

    return chunk_gla(q, k, v, log_decay)[0]  # (B, L, H, K) layout and scale K^-0.5, as ours


def _case(batch, length, heads, dim, element_size=2):
    return {
        "name": f"gla B={batch} L={length} H={heads} K=V={dim}",
        "inputs": _inputs(batch, length, heads, dim),
        "run": {
            "triton": lambda q, k, v, log_decay: gla(q, k, v, log_decay, backend="triton"),
            "torch": lambda q, k, v, log_decay: gla(q, k, v, log_decay, backend="torch"),
            "fla": _fla,
        },
        # q, k, v and o in the inputs' dtype (2 bytes for bf16), the gates in float32.
        "bytes": batch * length * heads * dim * (4 * element_size + 4),
    }


def cases(size: str) -> list[dict]:
    if size == "tiny":
        return [_case(1, 80, 2, 16)]
    if size != "real":
        raise ValueError(f"size must be 'real' or 'tiny', got {size!r}")
    return [_case(4, length, heads, dim) for heads, dim in ((24, 64), (16, 128)) for length in (2048, 8192)]
