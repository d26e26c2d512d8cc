"""The chunkwise gated delta rule in pure PyTorch: the WY/UT representation inside chunks, a loop over chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmlab.ops.gated_delta_rule import gated_delta_rule_op
from ssmlab.ops.gated_delta_rule.reference import compute_dtype


def _chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L, H, ...) with L a multiple of ``size`` -> (B, H, n, size, ...)."""
    return rearrange(x, "b (n c) h ... -> b h n c ...", c=size)


def _chunked(q, k, v, beta, log_alpha, scale, chunk_size, initial_state):
    batch, length, heads, key_dim = q.shape
    pad = -length % chunk_size
    if pad:
        # Padded positions write nothing (beta = k = v = 0) and do not decay (log_alpha = 0).
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        beta, log_alpha = F.pad(beta, (0, 0, 0, pad)), F.pad(log_alpha, (0, 0, 0, pad))
    q, k, v = _chunks(q * scale, chunk_size), _chunks(k, chunk_size), _chunks(v, chunk_size)  # (B, H, n, C, .)
    beta, log_alpha = _chunks(beta, chunk_size), _chunks(log_alpha, chunk_size)  # (B, H, n, C)
    value_dim = v.shape[-1]

    # Decay from position j to position i of the same chunk, exp(G_i - G_j), for j < i and for j <= i;
    # the exponent is set to -inf elsewhere before exp, so no positive exponent is ever taken.
    cumulative = log_alpha.cumsum(dim=-1)  # G, (B, H, n, C)
    gaps = cumulative[..., :, None] - cumulative[..., None, :]  # (B, H, n, C, C)
    ones = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device)
    strict_decay = torch.exp(gaps.masked_fill(~ones.tril(-1), float("-inf")))
    causal_decay = torch.exp(gaps.masked_fill(~ones.tril(), float("-inf")))

    # The UT transform: (I + A) [U | W] = [diag(beta) V | diag(beta exp(G)) K], A strictly lower triangular.
    system = beta[..., None] * (k @ k.transpose(-1, -2)) * strict_decay  # A, (B, H, n, C, C)
    system = system + torch.eye(chunk_size, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta[..., None] * v, (beta * torch.exp(cumulative))[..., None] * k], dim=-1)
    solution = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    values, keys = solution.split([value_dim, key_dim], dim=-1)  # U (B, H, n, C, V), W (B, H, n, C, K)

    scores = (q @ k.transpose(-1, -2)) * causal_decay  # (B, H, n, C, C)
    q_from_start = q * torch.exp(cumulative)[..., None]  # (B, H, n, C, K)
    k_to_end = k * torch.exp(cumulative[..., -1:] - cumulative)[..., None]  # (B, H, n, C, K)
    chunk_decay = torch.exp(cumulative[..., -1])[..., None, None]  # (B, H, n, 1, 1)

    state = q.new_zeros(batch, heads, key_dim, value_dim) if initial_state is None else initial_state
    outputs = []
    for c in range(q.shape[2]):
        corrected = values[:, :, c] - keys[:, :, c] @ state  # u = U - W S_0, (B, H, C, V)
        outputs.append(q_from_start[:, :, c] @ state + scores[:, :, c] @ corrected)
        state = chunk_decay[:, :, c] * state + k_to_end[:, :, c].transpose(-1, -2) @ corrected
    o = rearrange(torch.stack(outputs, dim=2), "b h n c v -> b (n c) h v")[:, :length]
    return o, state


@gated_delta_rule_op.register("torch", priority=10)
def gated_delta_rule_torch(q, k, v, beta, log_alpha, *, scale, chunk_size=64, initial_state=None):
    dtype = compute_dtype(q.dtype)
    log_alpha = beta.new_zeros(beta.shape, dtype=dtype) if log_alpha is None else log_alpha.to(dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    o, state = _chunked(q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), log_alpha, scale,
                        min(chunk_size, q.shape[1]), init)
    return o.to(v.dtype), state
