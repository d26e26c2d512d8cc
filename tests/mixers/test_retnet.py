import math

import pytest
import torch
import torch.nn.functional as F

import ssmlab
from ssmlab.layers import apply_rotary
from tests.utils import assert_close


def _run(mixer, form, x, state=None):
    mixer.form = form
    with torch.no_grad():
        return mixer(x, state, return_state=True)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("length, chunk", [(1, 4), (9, 4), (37, 8), (64, 16)])
def test_parallel_chunkwise_recurrent_agree(length, chunk, normalize):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("retnet", 16, n_heads=4, chunk_size=chunk, normalize=normalize, dtype=torch.float64)
    x = torch.randn(2, length, 16, dtype=torch.float64)
    prefix = torch.randn(2, 5, 16, dtype=torch.float64)
    _, s0 = _run(mixer, "recurrent", prefix)
    for state in (None, s0):
        want, want_state = _run(mixer, "recurrent", x, state)
        for form in ("parallel", "chunkwise"):
            y, s = _run(mixer, form, x, state)
            label = f"{form} vs recurrent ({'with' if state else 'without'} a state)"
            assert_close(y, want, atol=1e-10, rtol=1e-10, name=label)
            for key in want_state:
                assert_close(s[key], want_state[key], atol=1e-10, rtol=1e-10, name=f"state[{key!r}]: {label}")


def test_gradients_of_the_forms_agree():
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("retnet", 16, n_heads=2, chunk_size=3, dtype=torch.float64)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    grads = {}
    for form in ("parallel", "chunkwise", "recurrent"):
        mixer.form = form
        mixer.zero_grad()
        mixer(x).square().sum().backward()
        grads[form] = {n: p.grad.clone() for n, p in mixer.named_parameters()}
    for form in ("chunkwise", "recurrent"):
        for name, g in grads[form].items():
            assert_close(g, grads["parallel"][name], atol=1e-10, rtol=1e-10, name=f"grad of {name}: {form}")


@pytest.mark.parametrize("normalize", [True, False])
def test_parallel_form_is_the_paper_formula(normalize):
    """Eq. (5) and section 2.4 of arXiv 2307.08621, written with explicit matrices."""
    torch.manual_seed(0)
    h, length = 4, 12
    mixer = ssmlab.create_mixer("retnet", 16, n_heads=h, normalize=normalize, dtype=torch.float64)
    x = torch.randn(2, length, 16, dtype=torch.float64)
    heads = lambda t: t.view(2, length, h, -1).transpose(1, 2)  # noqa: E731  (B, H, L, e)
    positions = torch.arange(length)
    q = apply_rotary(heads(mixer.q_proj(x)), positions, base=mixer.rotary_base, interleaved=True)
    k = apply_rotary(heads(mixer.k_proj(x)), positions, base=mixer.rotary_base, interleaved=True)
    v = heads(mixer.v_proj(x))
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(h, dtype=torch.float64))
    n, m = positions[:, None], positions[None]
    decay = torch.where(n >= m, gamma[:, None, None] ** (n - m), torch.zeros(()))  # (H, L, L)
    if normalize:
        decay = decay / decay.sum(-1, keepdim=True).sqrt()
    scores = q @ k.transpose(-1, -2) / math.sqrt(4) * decay
    if normalize:
        scores = scores / scores.sum(-1, keepdim=True).abs().clamp_min(1)
    o = (scores @ v).transpose(1, 2).reshape(2 * length, -1)  # (B L, H Dv)
    o = F.group_norm(o, h, mixer.norm_weight, mixer.norm_bias, eps=mixer.norm_eps).view(2, length, -1)
    want = mixer.out_proj(F.silu(mixer.g_proj(x)) * o)
    mixer.form = "parallel"
    assert_close(mixer(x), want, atol=1e-10, rtol=1e-10, name="retention vs the paper's matrices")


def test_decays_and_shapes():
    mixer = ssmlab.create_mixer("retnet", 32, n_heads=4, dtype=torch.float64)
    gamma = torch.exp(mixer._log_gamma(torch.zeros((), dtype=torch.float64)))
    assert_close(gamma, torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]), atol=1e-15, name="gamma")
    state = mixer.init_state(3)
    assert state["kv"].shape == (3, 4, 8, 16) and state["z"].shape == (3, 4, 8) and state["pos"].shape == (3,)
    assert "z" not in ssmlab.create_mixer("retnet", 32, normalize=False).init_state(1)


def test_relative_positions_without_normalisation():
    """Without the position-dependent normalisation, retention sees only relative positions:
    starting at position 1000 with an empty state gives the same output."""
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("retnet", 16, n_heads=2, normalize=False, dtype=torch.float64)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    state = mixer.init_state(2, dtype=torch.float64)
    state["pos"] = torch.tensor([1000, 3])
    assert_close(mixer(x, state), mixer(x), atol=1e-10, name="retention with shifted positions")


def test_bad_options():
    with pytest.raises(ValueError, match="form"):
        ssmlab.create_mixer("retnet", 16, form="fast")
    with pytest.raises(ValueError, match="even size"):
        ssmlab.create_mixer("retnet", 12, n_heads=4)
    with pytest.raises(ValueError, match="chunk_size"):
        ssmlab.create_mixer("retnet", 16, chunk_size=0)
    with pytest.raises(ValueError, match="expand_v"):
        ssmlab.create_mixer("retnet", 16, expand_v=0)
