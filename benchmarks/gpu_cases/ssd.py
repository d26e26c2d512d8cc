"""GPU benchmark cases of ``ssd`` (Mamba-2, arXiv 2405.21060) for ``benchmarks/gpu.py``.

Real size: Mamba-2's layer in the issue, B=4, H=24, P=64, N=128, one group, L in {2048, 8192}, chunks of 256
positions as the Mamba-2 mixer runs them. fla's
counterpart is ``fla.ops.simple_gla.chunk_simple_gla`` (scalar per-position decays): q = C, k = B, v = dt x,
g = dt A, scale 1, B and C copied to every head, plus D x; its state is (K, V) = (N, P).
"""

from __future__ import annotations

import torch

CHUNK = 256  # the chunk of the Mamba-2 mixer (and of the official kernels); fla's simple_gla has its own, 64
SIZES = {"real": [(4, 2048, 24, 64, 128, 1), (4, 8192, 24, 64, 128, 1)], "tiny": [(1, 40, 2, 4, 8, 1)]}


def _inputs(batch, length, heads, head_dim, n_state, groups):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)

        def r(*shape, as_dtype=dtype):
            return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(as_dtype)

        dt = torch.nn.functional.softplus(r(batch, length, heads, as_dtype=torch.float32) - 4.0)  # Mamba-2's dt range
        inputs = {"x": r(batch, length, heads, head_dim), "dt": dt,
                  "A": -torch.exp(r(heads, as_dtype=torch.float32)), "B": r(batch, length, groups, n_state),
                  "C": r(batch, length, groups, n_state), "D": r(heads, as_dtype=torch.float32),
                  "initial_state": r(batch, heads, head_dim, n_state, as_dtype=torch.float32)}
        return {k: v.requires_grad_(True) for k, v in inputs.items()}

    return make


def _ours(backend):
    def run(x, dt, A, B, C, D, initial_state):
        from ssmlab.ops import ssd

        return ssd(x, dt, A, B, C, chunk_size=CHUNK, D=D, initial_state=initial_state, return_final_state=True,
                   backend=backend)

    return run


def _fla(x, dt, A, B, C, D, initial_state):
    from fla.ops.simple_gla import chunk_simple_gla

    heads = x.shape[2]
    per_head = heads // B.shape[2]
    q = C.repeat_interleave(per_head, dim=2)
    k = B.repeat_interleave(per_head, dim=2)
    v = (x * dt[..., None].to(x.dtype)).to(x.dtype)
    h0 = initial_state.transpose(-1, -2).contiguous()  # (B, H, N, P): fla's (K, V)
    y, state = chunk_simple_gla(q, k, v, g=dt * A, scale=1.0, initial_state=h0, output_final_state=True)
    return y + x * D[:, None].to(x.dtype), state.transpose(-1, -2)


def _bytes(batch, length, heads, head_dim, n_state, groups, itemsize):
    """x, B, C read and y written in the input dtype; dt read, the initial and final states in float32."""
    return (itemsize * (2 * batch * length * heads * head_dim + 2 * batch * length * groups * n_state)
            + 4 * (batch * length * heads + 2 * heads + 2 * batch * heads * head_dim * n_state))


def cases(size: str) -> list[dict]:
    """The benchmark cases at ``size``, "real" (the issue's sizes) or "tiny" (seconds under the interpreter).
    ``bytes`` is for bf16 inputs (2 bytes an element)."""
    return [{"name": f"ssd B={s[0]} L={s[1]} H={s[2]} P={s[3]} N={s[4]} G={s[5]} T={CHUNK}", "inputs": _inputs(*s),
             "run": {"triton": _ours("triton"), "torch": _ours("torch"), "fla": _fla},
             "bytes": _bytes(*s, itemsize=2)} for s in SIZES[size]]
