import pytest
import torch

import ssmlab
from ssmlab.ops import hippo, s4d_legs, ssm_kernel_diag
from tests.utils import assert_close


def _kernel(layer, length):
    """The layer's convolution kernel K (H, L), from its discretised system."""
    with torch.no_grad():
        dtl, b_bar, w = layer._system()
        powers = torch.exp(dtl[..., None] * torch.arange(length))
        return torch.einsum("hn,hnl->hl", w * b_bar, powers).real


def test_dss_exp_is_the_zoh_diagonal_kernel():
    torch.manual_seed(0)
    dss = ssmlab.create_mixer("dss", 4, d_state=6, sep_dt=False, dtype=torch.float64)
    lam = torch.complex(-torch.exp(dss.log_Lambda_real), dss.Lambda_imag).expand(4, 6)
    w = torch.view_as_complex(dss.W.contiguous())
    want = ssm_kernel_diag(lam, torch.ones_like(w), w, torch.exp(dss.log_dt), 20)
    assert_close(_kernel(dss, 20), want.real, atol=1e-12, name="DSS-exp kernel")
    assert_close(torch.complex(-torch.exp(dss.log_Lambda_real), dss.Lambda_imag), s4d_legs(12), atol=1e-12,
                 name="skew-HiPPO initialisation")


def _separate_steps(dss):
    """dt Lambda with the real and imaginary parts of Lambda scaled by their own (perturbed) steps."""
    with torch.no_grad():
        dss.log_dt[:, 1] += 0.5 * torch.randn(dss.log_dt.shape[0], dtype=dss.log_dt.dtype)
    lam = torch.complex(-torch.exp(dss.log_Lambda_real), dss.Lambda_imag)
    dt = torch.exp(dss.log_dt)
    return lam, torch.complex(lam.real * dt[:, :1], lam.imag * dt[:, 1:])  # (N,), (H, N)


def test_dss_exp_with_separate_steps_for_real_and_imaginary_parts():
    """The official code's default: K_k = Re(sum_n W_n (exp(dtl_n) - 1) / lambda_n exp(k dtl_n))."""
    torch.manual_seed(0)
    dss = ssmlab.create_mixer("dss", 4, d_state=6, dtype=torch.float64)
    assert dss.log_dt.shape == (4, 2)
    lam, dtl = _separate_steps(dss)
    w = torch.view_as_complex(dss.W.contiguous())
    k = torch.arange(20)
    want = torch.einsum("hn,hnl->hl", w * torch.expm1(dtl) / lam, torch.exp(dtl[..., None] * k)).real
    assert_close(_kernel(dss, 20), want, atol=1e-12, name="DSS-exp kernel, separate steps")


def test_dss_softmax_kernel_at_l_max():
    torch.manual_seed(0)
    L = 16
    dss = ssmlab.create_mixer("dss", 3, d_state=5, version="softmax", l_max=L, dtype=torch.float64)
    lam, dtl = _separate_steps(dss)
    w = torch.view_as_complex(dss.W.contiguous())
    P = dtl[..., None] * torch.arange(L)  # (H, N, L)
    softmax = torch.exp(P) / torch.exp(P).sum(-1, keepdim=True)
    want = torch.einsum("hn,hnl->hl", w / lam, softmax).real
    assert_close(_kernel(dss, L), want, atol=1e-12, name="DSS-softmax")


def test_lssl_uses_the_hippo_matrix_and_conv_equals_recurrence():
    torch.manual_seed(0)
    lssl = ssmlab.create_mixer("lssl", 3, d_state=5, dtype=torch.float64)
    assert torch.equal(lssl.A, hippo("legs", 5)[0]) and not lssl.A.requires_grad
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    a_bar, b_bar = lssl._discrete()
    h = torch.zeros(2, 3, 5, dtype=torch.float64)
    pre = []
    for t in range(30):
        h = (a_bar @ h[..., None])[..., 0] + b_bar * x[:, t, :, None]
        pre.append((lssl.C * h).sum(-1) + lssl.D * x[:, t])
    assert_close(lssl(x), lssl.output(torch.stack(pre, 1)), atol=1e-10, name="LSSL conv vs recurrence")


def test_bad_options():
    with pytest.raises(ValueError, match="version"):
        ssmlab.create_mixer("dss", 4, version="sigmoid")
    with pytest.raises(ValueError, match="unknown HiPPO measure"):
        ssmlab.create_mixer("lssl", 4, measure="cheb")


@pytest.mark.parametrize("measure", ["legs", "lagt", "legt"])
def test_lssl_structured_learnt_A_starts_at_the_hippo_matrix(measure):
    """The official tridiagonal-inverse form represents HiPPO-LegS and LagT exactly, and LegT at twice
    our scale (a rescaling of time); it learns 7N + 2 parameters and trains A through them."""
    lssl = ssmlab.create_mixer("lssl", 3, d_state=6, learn_A=True, measure=measure, dtype=torch.float64)
    A, B = lssl.system()
    want_A, want_B = hippo(measure, 6)
    scale = 2.0 if measure == "legt" else 1.0
    assert_close(A, scale * want_A, atol=1e-12, name=f"{measure} A")
    assert_close(B, scale * want_B, atol=1e-12, name=f"{measure} B")
    structured = [p for n, p in lssl.named_parameters() if n.startswith("A_")]
    assert sum(p.numel() for p in structured) == 7 * 6 + 2
    lssl(torch.randn(2, 9, 3, dtype=torch.float64)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lssl.named_parameters()
               if n in ("A_d", "A_pl", "A_c", "A_b"))
    with pytest.raises(ValueError, match="structured learnt A"):
        ssmlab.create_mixer("lssl", 3, d_state=6, learn_A=True, measure="fout")
