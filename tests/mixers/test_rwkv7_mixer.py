"""RWKV-7 (arXiv 2503.14456): what the conformance suite cannot see.

The layer against the official equations (BlinkDL/RWKV-LM ``RWKV-v7/rwkv_v7_demo.py``, ``RWKV_Tmix_x070``
of the first layer), restated here with the official parameterisation and the official (V, K) layout of
the state: the decay ``exp(-exp(w))`` with ``w = -softplus(-(w0 + tanh(x_w W1) W2)) - 0.5`` and the
update ``S = S diag(w) + (S a) b^T + v k^T``, ``o = S r``. Also the official initialisation and the
default LoRA ranks.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


def _official(mixer, x):
    """The official time mixing of the first layer, x (B, T, C) -> (B, T, C), from our parameters."""
    B, T, C = x.shape
    H, N = mixer.n_heads, mixer.head_dim
    xx = F.pad(x, (0, 0, 1, -1)) - x
    xr, xw, xk, xv, xa, xg = (x + xx * getattr(mixer, f"x_{c}") for c in "rwkvag")
    w1, w2, w0 = mixer.w_lora[0].weight.T, mixer.w_lora[2].weight.T, mixer.w_lora[2].bias
    a1, a2, a0 = mixer.a_lora[0].weight.T, mixer.a_lora[2].weight.T, mixer.a_lora[2].bias
    g1, g2 = mixer.g_lora[0].weight.T, mixer.g_lora[2].weight.T
    r, k, v = xr @ mixer.r_proj.weight.T, xk @ mixer.k_proj.weight.T, xv @ mixer.v_proj.weight.T
    w = -F.softplus(-(w0 + torch.tanh(xw @ w1) @ w2)) - 0.5
    a = torch.sigmoid(a0 + (xa @ a1) @ a2)
    g = torch.sigmoid(xg @ g1) @ g2
    kk = F.normalize((k * mixer.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
    k = k * (1 + (a - 1) * mixer.k_a)
    decay = torch.exp(-torch.exp(w)).view(B, T, H, N)
    r, k, v, aa, bb = (t.view(B, T, H, N) for t in (r, k, v, -kk, kk * a))
    state = torch.zeros(B, H, N, N, dtype=x.dtype)  # (V, K)
    out = []
    for t in range(T):
        state = state * decay[:, t, :, None, :] + state @ aa[:, t, :, :, None] @ bb[:, t, :, None, :] \
            + v[:, t, :, :, None] @ k[:, t, :, None, :]
        out.append((state @ r[:, t, :, :, None])[..., 0])
    y = torch.stack(out, 1).reshape(B * T, C)
    y = F.group_norm(y, H, mixer.g_norm.weight, mixer.g_norm.bias, eps=mixer.g_norm.eps).view(B, T, C)
    y = y + ((r * k * mixer.r_k).sum(-1, keepdim=True) * v).view(B, T, C)
    return (y * g) @ mixer.out_proj.weight.T, state


@pytest.mark.parametrize("options", [dict(head_dim=4, chunk_size=4), dict(n_heads=2, layer_id=2, n_layers=4)])
def test_matches_the_official_equations(options):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("rwkv7", 16, **options, decay_low_rank_dim=4, a_low_rank_dim=4, gate_low_rank_dim=8,
                                dtype=torch.float64)
    with torch.no_grad():  # away from the initialisation, whose zero LoRA down-projections hide the LoRA paths
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    want, want_state = _official(mixer, x)
    y, state = mixer(x, return_state=True)
    assert_close(y, want, atol=1e-12, name="output")
    assert_close(state["memory"], want_state.transpose(-1, -2), atol=1e-12, name="memory (K, V) = official (V, K)^T")
    assert_close(state["shift"], x[:, -1], atol=0, name="token-shift state")


def test_official_initialisation():
    d, layer_id, n_layers = 128, 3, 12
    mixer = ssmlab.create_mixer("rwkv7", d, head_dim=64, layer_id=layer_id, n_layers=n_layers, dtype=torch.float64)
    r0, r1 = layer_id / (n_layers - 1), 1 - layer_id / n_layers
    n = torch.arange(d, dtype=torch.float64)
    assert_close(mixer.x_w, 1 - (n / d) ** (0.9 * r1), atol=1e-15, name="x_w")
    assert_close(mixer.x_g, 1 - (n / d) ** (0.2 * r1), atol=1e-15, name="x_g")
    zigzag = ((n % 64) - 31.5) / 31.5
    zigzag = zigzag * zigzag.abs()
    assert_close(mixer.w_lora[2].bias, -6 + 6 * (n / (d - 1)) ** (1 + r0 ** 0.3) + 0.5 + 2.5 * zigzag, atol=1e-13,
                 name="w0")
    assert_close(mixer.a_lora[2].bias, -0.19 + 0.3 * zigzag + 0.4 * (n / (d - 1) - 0.5), atol=1e-15, name="a0")
    assert_close(mixer.k_k, 0.71 - 0.1 * (n / (d - 1) - 0.5), atol=1e-15, name="k_k")
    assert bool((mixer.k_a == 1.02).all()) and bool((mixer.r_k == -0.04).all())
    assert_close(mixer.g_norm.weight, torch.full((d,), (4 / 12) ** 0.7, dtype=torch.float64), atol=1e-15,
                 name="ln_x weight")
    for lora in (mixer.w_lora, mixer.a_lora, mixer.g_lora):
        assert bool((lora[0].weight == 0).all())
        up = lora[2].weight  # (D, rank), orthonormal columns times 0.1
        assert_close(up.T @ up, 0.01 * torch.eye(up.shape[1], dtype=torch.float64), atol=1e-14, name="LoRA up")
    assert mixer.k_proj.weight.abs().max() <= 0.05 / math.sqrt(d)
    assert 0.4 / math.sqrt(d) < mixer.r_proj.weight.abs().max() <= 0.5 / math.sqrt(d)
    assert mixer.g_norm.eps == pytest.approx(64e-5)
    narrow = ssmlab.create_mixer("rwkv7", 16, head_dim=8, dtype=torch.float64)  # rank 32 > D: gain 0.1 sqrt(32 / 16)
    up = narrow.w_lora[2].weight  # (16, 32): orthonormal rows times 0.1 sqrt(2)
    assert_close(up @ up.T, 0.02 * torch.eye(16, dtype=torch.float64), atol=1e-14, name="LoRA up, rank > D")


@pytest.mark.parametrize("d_model, ranks, heads", [(768, (64, 64, 128), 12), (1024, (64, 64, 160), 16),
                                                    (2048, (128, 128, 224), 32)])
def test_default_sizes_are_official(d_model, ranks, heads):
    """The official suggestions of D_DECAY_LORA, D_AAA_LORA and D_GATE_LORA (0.1B: 64, 64, 128)."""
    mixer = ssmlab.create_mixer("rwkv7", d_model, device="meta")
    assert (mixer.w_lora[0].out_features, mixer.a_lora[0].out_features, mixer.g_lora[0].out_features) == ranks
    assert (mixer.n_heads, mixer.head_dim) == (heads, 64)


def test_bad_options():
    with pytest.raises(ValueError, match="head_dim"):
        ssmlab.create_mixer("rwkv7", 48, head_dim=32)
    with pytest.raises(ValueError, match="n_heads"):
        ssmlab.create_mixer("rwkv7", 48, n_heads=5)
    with pytest.raises(ValueError, match="layer_id"):
        ssmlab.create_mixer("rwkv7", 16, head_dim=4, layer_id=2, n_layers=2)
