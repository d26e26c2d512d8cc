"""GLA (arXiv 2312.06635) and HGRN2 (arXiv 2404.07904) mixers: what the conformance suite cannot see.

Over two positions from a zero state the memory is ``diag(f_2) k_1 v_1^T + k_2 v_2^T`` with
``f_2 = exp(g_2)``, and each head reads ``o_t = K^-0.5 S_t^T q_t``; written out here from the
layers' formulas in flash-linear-attention (``fla/layers/gla.py``, ``fla/layers/hgrn2.py``), with
the parameters of the mixer.
"""

import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


def _two_positions(q, k, v, g):
    """q, k, g (B, 2, H, K), v (B, 2, H, V) -> o (B, 2, H, V), the recurrence written out."""
    scale = q.shape[-1] ** -0.5
    s1 = k[:, 0, ..., None] * v[:, 0, :, None, :]  # (B, H, K, V)
    s2 = g[:, 1].exp()[..., None] * s1 + k[:, 1, ..., None] * v[:, 1, :, None, :]
    o1 = scale * (q[:, 0, ..., None] * s1).sum(-2)
    o2 = scale * (q[:, 1, ..., None] * s2).sum(-2)
    return torch.stack([o1, o2], 1)


def _rms(x, weight, eps):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight


def _gla_by_hand(m, x):
    B, L, _ = x.shape
    H = m.num_heads
    q = m.q_proj(x).view(B, L, H, -1)
    k = m.k_proj(x).view(B, L, H, -1)
    v = m.v_proj(x).view(B, L, H, -1)
    low, up = m.gk_proj
    g = F.logsigmoid(up(low(x))).view(B, L, H, -1) / 16  # fla's gate_logit_normalizer
    o = _rms(_two_positions(q, k, v, g), m.norm.weight, m.norm.eps)
    o = o * F.silu(m.g_proj(x).view(B, L, H, -1))
    return m.out_proj(o.flatten(2))


def _hgrn2_by_hand(m, x):
    B, L, D = x.shape
    H = m.num_heads
    q = F.silu(m.q_proj(x)).view(B, L, H, -1)
    f = torch.sigmoid(m.f_proj(x)).view(B, L, H, -1)  # forget gate
    o = _two_positions(q, 1 - f, m.i_proj(x).view(B, L, H, -1), f.log())
    return m.out_proj(_rms(o.flatten(2), m.norm.weight, m.norm.eps))


@pytest.mark.parametrize("name, options, by_hand", [
    ("gla", dict(num_heads=2, gate_low_rank_dim=4), _gla_by_hand),
    ("hgrn2", dict(expand_ratio=4), _hgrn2_by_hand),
])
def test_two_positions_closed_form(name, options, by_hand):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer(name, 8, **options, dtype=torch.float64)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    expected = by_hand(mixer, x)
    assert_close(mixer(x), expected, atol=1e-12, name=f"{name} over two positions")
    y0, state = mixer(x[:, :1], return_state=True)
    assert_close(mixer.step(x[:, 1], state)[0], expected[:, 1], atol=1e-12, name=f"{name} step")


@pytest.mark.parametrize("name, d_model, heads, k, v", [
    ("gla", 1024, 4, 128, 256),  # fla's GatedLinearAttention defaults
    ("hgrn2", 1024, 8, 128, 128),  # fla's HGRN2Attention defaults (expand_ratio 128)
    ("hgrn2", 64, 4, 16, 16),
])
def test_default_sizes_are_fla_defaults(name, d_model, heads, k, v):
    options = {} if d_model > 64 else dict(expand_ratio=None, num_heads=4)
    mixer = ssmlab.create_mixer(name, d_model, **options, device="meta")
    assert (mixer.num_heads, mixer.head_k_dim, mixer.head_v_dim) == (heads, k, v)
