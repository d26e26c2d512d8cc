import pytest
import torch
import torch.nn.functional as F

import ssmlab
from tests.utils import assert_close


def test_h3_is_q_times_ssm_of_shifted_k_times_v():
    """The shift SSM run as its recurrence (A = shift matrix, learnt B, C, D), then the diagonal SSM."""
    torch.manual_seed(0)
    h3 = ssmlab.create_mixer("h3", 6, d_state=4, dtype=torch.float64)
    with torch.no_grad():  # move B away from its initial e_1 (and the diagonal SSM's B from ones)
        h3.shift_B.add_(0.3 * torch.randn_like(h3.shift_B))
        h3.ssm.B.add_(0.3 * torch.randn_like(h3.ssm.B))
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    q, k, v = h3.qkv(x).chunk(3, dim=-1)
    shift = torch.diag(torch.ones(3, dtype=torch.float64), -1)  # (N, N): state n moves to n + 1
    h = torch.zeros(2, 6, 4, dtype=torch.float64)
    outs = []
    for t in range(11):
        h = h @ shift.T + h3.shift_B * k[:, t, :, None]
        outs.append((h3.shift_C * h).sum(-1) + h3.shift_D * k[:, t])
    shifted = torch.stack(outs, dim=1)
    ssm_out, _ = h3.ssm(shifted * v)
    assert_close(h3(x), h3.out_proj(q * ssm_out), atol=1e-12, name="H3 output")


def test_h3_heads_use_outer_products():
    torch.manual_seed(0)
    h3 = ssmlab.create_mixer("h3", 4, d_state=4, headdim=2, dtype=torch.float64)
    assert h3.ssm.channels == 8
    q, k, v = (torch.arange(4, dtype=torch.float64) + i for i in range(3))
    kv = h3._mix(q, k, v)  # head 0: k[0:2] v[0:2]^T flattened
    assert_close(kv[:4], torch.outer(k[:2], v[:2]).flatten(), atol=0, name="outer product")


def test_gss_shapes_and_formula():
    torch.manual_seed(0)
    gss = ssmlab.create_mixer("gss", 8, d_state=4, expand=2, d_ssm=3, dtype=torch.float64)
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    y, _ = gss.ssm(F.gelu(gss.ssm_in(x)))
    assert_close(gss(x), gss.out_proj(gss.ssm_out(y) * F.gelu(gss.gate_proj(x))), atol=1e-12, name="GSS")
    assert gss.gate_proj.out_features == 16 and gss.ssm.channels == 3


def test_bad_options():
    with pytest.raises(ValueError, match="headdim"):
        ssmlab.create_mixer("h3", 6, headdim=4)
    with pytest.raises(ValueError, match="expand"):
        ssmlab.create_mixer("gss", 8, expand=0)


def test_h3_diagonal_ssm_is_bilinear():
    """H3's diagonal SSM is discretised by the bilinear transform (the official code's default):
    ``K[l] = 2 Re(sum_n C_n B_n dt / (1 - dt A_n / 2) ((1 + dt A_n / 2) / (1 - dt A_n / 2))^l)``."""
    torch.manual_seed(0)
    h3 = ssmlab.create_mixer("h3", 3, d_state=4, dt_min=0.05, dt_max=0.5, dtype=torch.float64)
    with torch.no_grad():
        h3.ssm.B.add_(0.3 * torch.randn_like(h3.ssm.B))
    ssm = h3.ssm
    a = torch.complex(-torch.exp(ssm.log_A_real), ssm.A_imag)  # (H, N/2)
    dt = torch.exp(ssm.log_dt)[:, None]
    b = torch.view_as_complex(ssm.B.contiguous())
    c = torch.view_as_complex(ssm.C.contiguous())[0]
    a_bar = (1 + dt * a / 2) / (1 - dt * a / 2)
    powers = a_bar[..., None] ** torch.arange(20, dtype=torch.float64)  # (H, N/2, L)
    expected = 2 * torch.einsum("hn,hnl->hl", c * b * dt / (1 - dt * a / 2), powers).real
    assert_close(ssm.kernel(20), expected, atol=1e-12, name="H3 diagonal kernel")
    x = torch.randn(1, 20, 3, dtype=torch.float64)
    state = h3.init_state(1, dtype=torch.float64)
    outs = []
    for t in range(20):
        y, state = h3.step(x[:, t], state)
        outs.append(y)
    assert_close(torch.stack(outs, 1), h3(x), atol=1e-12, name="H3 step == forward")
