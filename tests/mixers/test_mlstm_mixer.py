import math

import torch
import torch.nn.functional as F

from ssmlab.mixers.mlstm import MLSTM
from tests.utils import assert_close


def _parallel_mlstm(q, k, v, i, f, eps=1e-6):
    """The stabilised parallel form of arXiv 2405.04517 (its appendix) for one head: q, k, v (B, L, d),
    i, f (B, L); D_tj = exp(sum_{j<r<=t} logsigmoid(f_r) + i_j - m_t) for j <= t, m_t the row maximum."""
    length = q.shape[1]
    cumulative = F.logsigmoid(f).cumsum(-1)
    log_d = cumulative[:, :, None] - cumulative[:, None, :] + i[:, None, :]
    log_d = log_d.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    m = log_d.amax(-1, keepdim=True)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) * torch.exp(log_d - m)
    return scores @ v / (torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps)


def test_forward_matches_the_layer_written_out():
    """Up-projection, conv + SiLU feeding q and k (v from the branch before the conv), block-diagonal q/k/v,
    gates from [q, k, v], per-head norm with weight 1 + w, learnable skip, SiLU output gate, down-projection."""
    torch.manual_seed(0)
    mixer = MLSTM(16, n_heads=2, round_to=8, qkv_proj_blocksize=4, dtype=torch.float64)
    with torch.no_grad():
        for p in (mixer.igate.weight, mixer.fgate.weight, mixer.norm_weight, mixer.skip):
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    inner, heads, d = 32, 2, 16
    up = x @ mixer.up_proj.weight.T
    branch, z = up[..., :inner], up[..., inner:]
    conv = F.conv1d(F.pad(branch.transpose(1, 2), (3, 0)), mixer.conv.weight, mixer.conv.bias, groups=inner)
    conv = F.silu(conv.transpose(1, 2))

    def blockwise(u, weight):  # blocks of 4 features, each with its own (4, 4) matrix
        return torch.cat([u[..., 4 * b:4 * b + 4] @ weight[b].T for b in range(inner // 4)], dim=-1)

    q, k, v = blockwise(conv, mixer.q_proj.weight), blockwise(conv, mixer.k_proj.weight), \
        blockwise(branch, mixer.v_proj.weight)
    gates_in = torch.cat([q, k, v], -1)
    i, f = mixer.igate(gates_in), mixer.fgate(gates_in)  # (B, L, H)
    heads_out = []
    for h in range(heads):
        part = slice(d * h, d * (h + 1))
        out = _parallel_mlstm(q[..., part], k[..., part], v[..., part], i[..., h], f[..., h])
        heads_out.append((out - out.mean(-1, keepdim=True)) / torch.sqrt(out.var(-1, unbiased=False, keepdim=True)
                                                                          + 1e-5))
    normed = torch.cat(heads_out, -1) * (1 + mixer.norm_weight)
    want = ((normed + mixer.skip * conv) * F.silu(z)) @ mixer.out_proj.weight.T
    with torch.no_grad():
        assert_close(mixer(x), want, atol=1e-12, name="mLSTM layer")


def test_inner_width_and_initialisation():
    """As xlstm's mLSTMLayerConfig and reset_parameters: E = proj_factor D rounded up to a multiple of 64,
    gate weights 0, forget-gate bias linspace(3, 6, H), norm weight 0 (the norm's scale 1 + w), skip 1."""
    torch.manual_seed(0)
    mixer = MLSTM(100, n_heads=4)
    assert mixer.inner == 256 and mixer.head_dim == 64
    assert mixer.up_proj.weight.shape == (512, 100) and mixer.q_proj.weight.shape == (64, 4, 4)
    assert mixer.igate.weight.shape == (4, 768)
    assert bool((mixer.igate.weight == 0).all()) and bool((mixer.fgate.weight == 0).all())
    assert_close(mixer.fgate.bias, torch.tensor([3.0, 4.0, 5.0, 6.0]), atol=1e-6, name="forget-gate bias")
    assert bool((mixer.norm_weight == 0).all()) and bool((mixer.skip == 1).all())
    assert abs(mixer.up_proj.weight.std().item() / math.sqrt(2 / 500) - 1) < 0.05
    assert abs(mixer.out_proj.weight.std().item() / (2 / math.sqrt(100)) - 1) < 0.05
    assert MLSTM(128, n_heads=4).inner == 256 and MLSTM(128, proj_factor=1.3).inner == 192


def test_empty_state_is_the_forward_without_state():
    torch.manual_seed(0)
    mixer = MLSTM(16, n_heads=2, round_to=8, chunk_size=4, dtype=torch.float64)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    state = mixer.init_state(2)
    assert bool(torch.isneginf(state["stabilizer"]).all())
    with torch.no_grad():
        assert_close(mixer(x, state), mixer(x), atol=1e-14, name="from init_state vs from None")
