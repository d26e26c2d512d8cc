import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_is_forward_plus_reversed_backward():
    torch.manual_seed(0)
    bi = ssmlab.create_mixer("bi-mamba", 16, d_state=4, combine="add", dtype=torch.float64)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    want = bi.forward_mixer(x) + bi.backward_mixer(x.flip(1)).flip(1)
    assert_close(bi(x), want, atol=1e-12, name="bidirectional output")
    # The last output depends on the first input and the first output on the last input.
    x2 = x.clone()
    x2[:, -1] += 1
    assert (bi(x2)[:, 0] - bi(x)[:, 0]).abs().max() > 1e-6


def test_bi_mamba_is_vision_mambas_v2_layer():
    # Vim (arXiv 2401.09417), bimamba_type="v2" with if_divide_out=True: one in_proj and one out_proj for both
    # directions, the rest per direction, out_proj((y_fwd + y_bwd) / 2). Count at D=256, E=512, N=16, R=16, k=4:
    # in_proj 256*1024 + out_proj 512*256 + 2 * (conv 512*4 + 512, x_proj 512*48, dt_proj 16*512 + 512,
    # A_log 512*16, D 512) = 262144 + 131072 + 2 * 44544.
    bi = ssmlab.create_mixer("bi-mamba", 256)
    assert sum(p.numel() for p in bi.parameters()) == 262_144 + 131_072 + 2 * 44_544
    torch.manual_seed(0)
    bi = ssmlab.create_mixer("bi-mamba", 16, d_state=4, bias=True, dtype=torch.float64)
    with torch.no_grad():
        for p in bi.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fwd, bwd = bi.forward_mixer, bi.backward_mixer
    assert fwd.in_proj is bwd.in_proj and fwd.out_proj is bwd.out_proj
    assert fwd.conv1d.weight is not bwd.conv1d.weight and fwd.A_log is not bwd.A_log
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    # out_proj is affine: mean(W u + b, W v + b) = W (u + v) / 2 + b, the output bias added once as in Vim.
    assert_close(bi(x), (fwd(x) + bwd(x.flip(1)).flip(1)) / 2, atol=1e-12, name="bi-mamba output")
    old = ssmlab.create_mixer("bi-mamba", 256, shared_projections=False, combine="add")
    assert sum(p.numel() for p in old.parameters()) == 2 * 437_760


def test_no_state_and_clear_errors():
    bi = ssmlab.create_mixer("bidirectional", 16, mixer="attention", combine="mean")
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi(torch.randn(1, 3, 16), return_state=True)
    with pytest.raises(ValueError, match="must be causal"):
        ssmlab.create_mixer("bidirectional", 16, mixer="bi-mamba")
    with pytest.raises(ValueError, match="combine"):
        ssmlab.create_mixer("bidirectional", 16, mixer="mamba", combine="max")
    model = ssmlab.create_model("bi-mamba", d_model=16, n_layers=1, vocab_size=7)
    with pytest.raises(ValueError, match="causal"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
