import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


@pytest.mark.parametrize("bidirectional", [False, True])
def test_is_an_explicit_toeplitz_matrix(bidirectional):
    torch.manual_seed(0)
    tnn = ssmlab.create_mixer("tnn", 4, rpe_dim=8, bidirectional=bidirectional, dtype=torch.float64)
    L = 9
    x = torch.randn(2, L, 4, dtype=torch.float64)
    u, v = F.silu(tnn.uv_proj(x)).chunk(2, dim=-1)
    offsets = torch.arange(-(L - 1), L, dtype=torch.float64)
    coeff = tnn.rpe(offsets) * tnn.decay ** offsets.abs()  # (E, 2L - 1), offset i - j
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    T = coeff[:, (i - j) + L - 1]  # (E, L, L)
    if not bidirectional:
        T = T * (i >= j)
    want = tnn.out_proj(u * torch.einsum("eij,bje->bie", T, v))
    assert_close(tnn(x), want, atol=1e-10, name="Toeplitz mixing")


def test_bad_options():
    with pytest.raises(ValueError, match="decay"):
        ssmlab.create_mixer("tnn", 4, decay=1.5)


def test_relative_position_encoder_normalises_before_each_activation():
    """The official Rpe (Doraemonzzz/tnn-pytorch, arXiv 2305.04749) puts a parameter-free
    ``x / (||x|| / sqrt(d) + 1e-8)`` before every ReLU."""
    torch.manual_seed(0)
    tnn = ssmlab.create_mixer("tnn", 4, rpe_dim=8, rpe_layers=2, dtype=torch.float64)
    linears = [m for m in tnn.rpe.mlp if isinstance(m, torch.nn.Linear)]
    offsets = torch.arange(-5.0, 6.0, dtype=torch.float64)
    h = offsets[:, None] * linears[0].weight[:, 0] + linears[0].bias  # (n, hidden)
    for lin in linears[1:]:
        rms = h.pow(2).mean(-1, keepdim=True).sqrt()
        h = F.relu(h / (rms + 1e-8)) @ lin.weight.T + lin.bias
    assert_close(tnn.rpe(offsets), h.T, atol=1e-12, name="relative position encoder")
