"""GPU benchmark cases of ``gated_delta_rule`` (Gated DeltaNet, arXiv 2412.06464): the triton and torch backends
and fla's ``chunk_gated_delta_rule``.

Each case is a dict for ``benchmarks/gpu.py``: ``name``; ``inputs(device, dtype)``, the tensors (q, unit-length k
and v in ``dtype``, beta = sigmoid(.) and log_alpha = logsigmoid(.) in float32, all requiring gradients); ``run``
with one callable per implementation returning the output; ``bytes``, what the forward must read and write at least
(q, k, v, beta and log_alpha read, the output written). Sizes: ``"real"`` is B=4 with H=24 heads of K=V=64 or H=16
heads of K=V=128 at L in {2048, 8192}; ``"tiny"`` a smoke test that runs under Triton's interpreter in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlab.ops import gated_delta_rule


def _inputs(batch, length, heads, dim):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
        q, v = r(batch, length, heads, dim).to(dtype), r(batch, length, heads, dim).to(dtype)
        k = F.normalize(r(batch, length, heads, dim), dim=-1).to(dtype)
        beta, log_alpha = torch.sigmoid(r(batch, length, heads)), F.logsigmoid(r(batch, length, heads) + 3)
        tensors = dict(q=q, k=k, v=v, beta=beta, log_alpha=log_alpha)
        return {name: t.requires_grad_(True) for name, t in tensors.items()}

    return make


def _ours(backend):
    def run(q, k, v, beta, log_alpha):
        return gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, backend=backend)

    return run


def _fla(q, k, v, beta, log_alpha):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    # (B, L, H, K) layout, g the log forget gate, scale K^-0.5: as ours. fla takes beta in the inputs' dtype.
    return chunk_gated_delta_rule(q, k, v, g=log_alpha, beta=beta.to(q.dtype))[0]


def _case(batch, length, heads, dim, element_size=2):
    return {
        "name": f"gated_delta_rule B={batch} L={length} H={heads} K=V={dim}",
        "inputs": _inputs(batch, length, heads, dim),
        "run": {"triton": _ours("triton"), "torch": _ours("torch"), "fla": _fla},
        # q, k, v and o in the inputs' dtype (2 bytes for bf16), beta and log_alpha in float32.
        "bytes": batch * length * heads * (4 * dim * element_size + 2 * 4),
    }


def cases(size: str) -> list[dict]:
    if size == "tiny":
        return [_case(1, 80, 2, 16)]
    if size != "real":
        raise ValueError(f"size must be 'real' or 'tiny', got {size!r}")
    return [_case(4, length, heads, dim) for heads, dim in ((24, 64), (16, 128)) for length in (2048, 8192)]
