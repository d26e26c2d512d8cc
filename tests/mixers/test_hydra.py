"""Hydra (arXiv 2407.09941): what the conformance suite cannot see.

The layer is written out as the paper's quasiseparable matrix, entry by entry: with
``a_r = exp(dt_r A)`` per head and direction, position t reads

* s < t: ``C_fw[t-1] . B_fw[s] dt_fw[s] prod_{s<r<t} a_fw[r]`` (the forward SSD, shifted one later),
* s > t: ``C_bw[t+1] . B_bw[s] dt_bw[s] prod_{t<r<s} a_bw[r]`` (the backward SSD, shifted one earlier),
* s = t: ``fc_D(x_t) + D`` (the diagonal),

of the centred convolution's outputs, then RMSNorm, the SiLU gate and the output projection.
A right-padded batch keeps padding out of every real position, whatever the padding holds.
"""

import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


def _make(**options):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("hydra", 8, **options, dtype=torch.float64)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mixer


def _quasiseparable(mixer, x):
    """The layer as a dense (L, L) matrix per head, built entry by entry. x (B, L, D) -> (B, L, D)."""
    E, H, P, G, N = mixer.d_inner, mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state
    length = x.shape[1]
    z, xbc, dt = torch.split(mixer.in_proj(x), [E, E + 4 * G * N, 2 * H], dim=-1)
    conv = F.conv1d(xbc.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias, padding=mixer.d_conv // 2,
                    groups=xbc.shape[-1])
    xs, b_f, c_f, b_b, c_b = torch.split(F.silu(conv.transpose(1, 2)), [E, G * N, G * N, G * N, G * N], dim=-1)
    dt_f, dt_b = F.softplus(dt[..., :H] + mixer.dt_bias), F.softplus(dt[..., H:] + mixer.dt_bias)  # (B, L, H)
    A = -torch.exp(mixer.A_log)
    diag = F.linear(xs, mixer.fc_D.weight) + mixer.D  # (B, L, H)
    y = torch.zeros(x.shape[0], length, E, dtype=x.dtype)
    for h in range(H):
        g = h // (H // G)
        bf, cf, bb, cb = (u[..., g * N:(g + 1) * N] for u in (b_f, c_f, b_b, c_b))
        m = torch.zeros(x.shape[0], length, length, dtype=x.dtype)
        for t in range(length):
            m[:, t, t] = diag[:, t, h]
            for s in range(t):
                decay = torch.exp(A[h] * dt_f[:, s + 1:t, h].sum(-1))
                m[:, t, s] = (cf[:, t - 1] * bf[:, s]).sum(-1) * dt_f[:, s, h] * decay
            for s in range(t + 1, length):
                decay = torch.exp(A[h] * dt_b[:, t + 1:s, h].sum(-1))
                m[:, t, s] = (cb[:, t + 1] * bb[:, s]).sum(-1) * dt_b[:, s, h] * decay
        y[..., h * P:(h + 1) * P] = m @ xs[..., h * P:(h + 1) * P]
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + mixer.norm.eps) * mixer.norm.weight
    return mixer.out_proj(y * F.silu(z))


@pytest.mark.parametrize("options", [
    dict(headdim=4, d_state=3, chunk_size=4),
    dict(headdim=2, d_state=2, ngroups=2, chunk_size=3, d_conv=3, bias=True),
])
def test_output_is_the_quasiseparable_matrix(options):
    mixer = _make(**options)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    assert_close(mixer(x), _quasiseparable(mixer, x), atol=1e-12, name=f"hydra {options}")


def test_padding_never_reaches_a_real_position():
    mixer = _make(headdim=4, d_state=3, chunk_size=4)
    n = torch.tensor([11, 6, 1, 9])
    x = torch.randn(4, 11, 8, dtype=torch.float64)
    real = (torch.arange(11) < n[:, None])[..., None]  # (B, L, 1)
    noisy = torch.where(real, x, 100 * torch.randn_like(x)).requires_grad_(True)
    y = mixer(noisy, lengths=n)
    y.square().sum().backward()
    assert noisy.grad.masked_select(~real).abs().max() == 0, "a real output depends on padding"
    with torch.no_grad():
        for b, k in enumerate(n.tolist()):
            assert_close(y[b, :k], mixer(x[b:b + 1, :k])[0], atol=1e-12, name=f"row {b} of length {k} alone")


def test_initialisation_is_the_official_one():
    mixer = ssmlab.create_mixer("hydra", 64, headdim=16, d_state=8)
    assert torch.equal(mixer.A_log, torch.zeros(8)) and torch.equal(mixer.D, torch.ones(8))
    dt = F.softplus(mixer.dt_bias)
    assert bool((dt >= 1e-3 - 1e-9).all() and (dt <= 0.1 + 1e-9).all())
    assert mixer.fc_D.bias is None and mixer.conv1d.weight.shape == (128 + 4 * 8, 1, 7)
    conv = ssmlab.create_mixer("hydra", 64, headdim=16, conv_init=0.01).conv1d.weight
    assert conv.abs().max() <= 0.01


@pytest.mark.parametrize("d_conv", [4, 0])
def test_even_or_empty_convolution_is_refused(d_conv):
    with pytest.raises(ValueError, match="d_conv"):
        ssmlab.create_mixer("hydra", 16, headdim=8, d_conv=d_conv)
