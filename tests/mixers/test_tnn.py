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
