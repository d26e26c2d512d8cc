"""DeltaNet (arXiv 2406.06484) and Gated DeltaNet (arXiv 2412.06464): what the conformance suite cannot see.

The first position from a zero state has a closed form: the memory is ``beta k v^T``, so each head
reads ``o = K^-0.5 beta (q . k) v`` with q, k the L2-normalised convolved projections; the
output is then normalised per head, gated and projected. A Gated DeltaNet whose ``A = exp(A_log)``
is 0 never forgets, so it is DeltaNet with the same weights. The initialisation of A_log and dt_bias
is fla's (``fla/layers/gated_deltanet.py``).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


def _first_position(mixer, x):
    """The layer at the first position from a zero state, worked by hand. x (B, D) -> (B, D)."""
    def conv(proj, c):  # a zero history leaves the last tap only
        u = proj(x) * c.weight[:, 0, -1] + (0 if c.bias is None else c.bias)
        return F.silu(u)

    H, K, V = mixer.num_heads, mixer.head_k_dim, mixer.head_v_dim
    def l2(u):  # fla's l2norm: u / sqrt(|u|^2 + 1e-6)
        return u / (u.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()

    q = l2(conv(mixer.q_proj, mixer.q_conv1d).view(-1, H, K))
    k = l2(conv(mixer.k_proj, mixer.k_conv1d).view(-1, H, K))
    v = conv(mixer.v_proj, mixer.v_conv1d).view(-1, H, V)
    beta = torch.sigmoid(mixer.b_proj(x))  # (B, H)
    o = K ** -0.5 * beta[..., None] * (q * k).sum(-1, keepdim=True) * v  # (B, H, V)
    o = o / o.pow(2).mean(-1, keepdim=True).add(mixer.o_norm.eps).sqrt() * mixer.o_norm.weight
    if mixer.g_proj is not None:
        o = o * F.silu(mixer.g_proj(x).view(-1, H, V))
    return mixer.out_proj(o.flatten(1))


@pytest.mark.parametrize("name, options", [
    ("deltanet", dict(num_heads=2)),
    ("deltanet", dict(num_heads=2, use_gate=True, conv_bias=True)),
    ("gated-deltanet", dict(num_heads=2, head_dim=4)),
])
def test_first_position_closed_form(name, options):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer(name, 8, **options, dtype=torch.float64)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 8, dtype=torch.float64)
    # The forget gate multiplies a zero memory: it does not enter the first position.
    assert_close(mixer(x[:, None])[:, 0], _first_position(mixer, x), atol=1e-12, name=f"{name} first position")


def test_gated_deltanet_without_decay_is_deltanet():
    torch.manual_seed(0)
    gated = ssmlab.create_mixer("gated-deltanet", 8, num_heads=2, head_dim=4, expand_v=2.0, chunk_size=4,
                                dtype=torch.float64)
    plain = ssmlab.create_mixer("deltanet", 8, num_heads=2, expand_k=1.0, expand_v=2.0, use_gate=True, chunk_size=4,
                                dtype=torch.float64)
    with torch.no_grad():
        gated.A_log.fill_(-math.inf)  # A = 0: alpha = 1 at every position
    shared = {k: v for k, v in gated.state_dict().items() if k not in ("A_log", "dt_bias", "a_proj.weight")}
    plain.load_state_dict(shared)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    assert_close(gated(x), plain(x), atol=1e-12, name="gated-deltanet with A = 0")
    # With A > 0 the memory decays and the outputs differ after the first position.
    with torch.no_grad():
        gated.A_log.fill_(0.0)
    assert (gated(x)[:, 1:] - plain(x)[:, 1:]).abs().max() > 1e-3


def test_gated_deltanet_init_as_fla():
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("gated-deltanet", 64, num_heads=256, head_dim=1, dtype=torch.bfloat16)
    a = mixer.A_log.exp()
    dt = F.softplus(mixer.dt_bias)
    assert mixer.A_log.dtype == mixer.dt_bias.dtype == torch.float32
    assert mixer.A_log._optim == {"weight_decay": 0.0} and mixer.dt_bias._optim == {"weight_decay": 0.0}
    assert 0 < a.min() and a.max() <= 16 and a.min() < 0.5 and a.std() > 3  # uniform on (0, 16): std 4.6
    assert 1e-3 * (1 - 1e-4) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt.log().std() > 0.8  # log-uniform on [log 1e-3, log 0.1]: std 1.33


@pytest.mark.parametrize("name, d_model, heads, k, v", [
    ("deltanet", 1024, 4, 256, 256),  # fla's DeltaNet defaults
    ("gated-deltanet", 2048, 6, 256, 512),  # fla's GatedDeltaNet defaults
])
def test_default_sizes_are_fla_defaults(name, d_model, heads, k, v):
    mixer = ssmlab.create_mixer(name, d_model, device="meta")
    assert (mixer.num_heads, mixer.head_k_dim, mixer.head_v_dim) == (heads, k, v)
