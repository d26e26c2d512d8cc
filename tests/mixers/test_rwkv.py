import math

import pytest
import torch

import ssmlab
from ssmlab.mixers.rwkv import wkv, wkv_step
from tests.utils import assert_close


def _naive_wkv(k, v, w, u):
    """Eq. (14) of arXiv 2305.13048 summed term by term (overflows for large keys)."""
    length = k.shape[1]
    out = []
    for t in range(length):
        i = torch.arange(t)
        weights = torch.exp(-(t - 1 - i)[:, None] * w + k[:, :t])  # (B, t, D)
        bonus = torch.exp(u + k[:, t])
        out.append(((weights * v[:, :t]).sum(1) + bonus * v[:, t]) / (weights.sum(1) + bonus))
    return torch.stack(out, 1)


def _stepped(k, v, w, u, state=None):
    if state is None:
        state = (torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]), torch.full_like(k[:, 0], -1e30))
    outs = []
    for t in range(k.shape[1]):
        y, state = wkv_step(k[:, t], v[:, t], w, u, state)
        outs.append(y)
    return torch.stack(outs, 1), state


def _inputs(length, dim=5, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = scale * torch.randn(2, length, dim, generator=g, dtype=torch.float64)
    v = torch.randn(2, length, dim, generator=g, dtype=torch.float64)
    w = torch.exp(torch.linspace(-5, 1, dim, dtype=torch.float64))
    u = torch.linspace(-1, 1, dim, dtype=torch.float64)
    return k, v, w, u


@pytest.mark.parametrize("length", [1, 2, 5, 17, 50])
def test_stable_wkv_is_the_naive_formula(length):
    k, v, w, u = _inputs(length)
    want = _naive_wkv(k, v, w, u)
    assert_close(wkv(k, v, w, u)[0], want, atol=1e-12, rtol=1e-10, name="chunked stable wkv vs naive")
    assert_close(_stepped(k, v, w, u)[0], want, atol=1e-12, rtol=1e-10, name="recurrent stable wkv vs naive")


def test_wkv_state_continues_a_sequence():
    k, v, w, u = _inputs(40)
    want, want_state = wkv(k, v, w, u)
    y1, s = wkv(k[:, :13], v[:, :13], w, u)
    y2, s = wkv(k[:, 13:], v[:, 13:], w, u, s)
    assert_close(torch.cat([y1, y2], 1), want, atol=1e-12, rtol=1e-10, name="wkv in two pieces")
    _, stepped_state = _stepped(k, v, w, u)
    for name, a, b, c in zip("abp", s, want_state, stepped_state):
        assert_close(a, b, atol=1e-12, rtol=1e-10, name=f"state {name}: pieces vs one call")
        assert_close(c, b, atol=1e-12, rtol=1e-10, name=f"state {name}: steps vs one call")


def test_gradients_match_the_naive_formula():
    k, v, w, u = (t.requires_grad_(True) for t in _inputs(12))
    want = torch.autograd.grad(_naive_wkv(k, v, w, u).sin().sum(), (k, v, w, u))
    for label, fn in (("chunked", lambda: wkv(k, v, w, u)[0]), ("recurrent", lambda: _stepped(k, v, w, u)[0])):
        got = torch.autograd.grad(fn().sin().sum(), (k, v, w, u))
        for name, a, b in zip("kvwu", got, want):
            assert_close(a, b, atol=1e-10, rtol=1e-8, name=f"{label} grad of {name}")


def test_gradcheck():
    k, v, w, u = (t.requires_grad_(True) for t in _inputs(6, dim=2))
    assert torch.autograd.gradcheck(lambda *a: wkv(*a)[0], (k, v, w, u))


def test_no_overflow_with_large_keys_in_float32():
    k, v, w, u = _inputs(300, dim=4, scale=1.0, seed=1)
    k = 100 * torch.sign(k) + k  # keys of magnitude about 100: e^100 overflows float32
    want = _stepped(k, v, w, u)[0]  # float64, stable
    k32, v32, w32, u32 = (t.float() for t in (k, v, w, u))
    assert not torch.isfinite(_naive_wkv(k32[:, :20], v32[:, :20], w32, u32)).all()  # the naive form does overflow
    for label, y in (("chunked", wkv(k32, v32, w32, u32)[0]), ("recurrent", _stepped(k32, v32, w32, u32)[0])):
        assert torch.isfinite(y).all(), label
        # Each wkv is a weighted mean of values (|v| < 5): float32 keeps ~1e-5 of it.
        assert_close(y, want, atol=1e-4, rtol=1e-4, name=f"{label} float32 wkv with keys ~100")


def test_initialisation_follows_the_rwkv4_code():
    d, layer_id, n_layers = 8, 2, 4
    mixer = ssmlab.create_mixer("rwkv", d, layer_id=layer_id, n_layers=n_layers, channel_mix=True,
                                dtype=torch.float64)
    r0, r1 = layer_id / (n_layers - 1), 1 - layer_id / n_layers
    for i in range(d):
        assert math.isclose(mixer.time_decay[i].item(), -5 + 8 * (i / (d - 1)) ** (0.7 + 1.3 * r0), abs_tol=1e-12)
        assert math.isclose(mixer.time_first[i].item(), math.log(0.3) + 0.5 * ((i + 1) % 3 - 1), abs_tol=1e-12)
        assert math.isclose(mixer.time_mix_k[i].item(), (i / d) ** r1, abs_tol=1e-12)
        assert math.isclose(mixer.time_mix_v[i].item(), (i / d) ** r1 + 0.3 * r0, abs_tol=1e-12)
        assert math.isclose(mixer.time_mix_r[i].item(), (i / d) ** (0.5 * r1), abs_tol=1e-12)
        assert math.isclose(mixer.ffn_mix_k[i].item(), (i / d) ** r1, abs_tol=1e-12)
    # Decays span exp(-5) .. exp(3) per step; deeper layers mix in more of the current token.
    assert math.isclose(mixer.time_decay[0].item(), -5) and math.isclose(mixer.time_decay[-1].item(), 3)
    first = ssmlab.create_mixer("rwkv", d, layer_id=0, n_layers=n_layers, dtype=torch.float64)
    assert (mixer.time_mix_k[1:] > first.time_mix_k[1:]).all()
    assert mixer.time_decay._optim == {"weight_decay": 0.0} and mixer.time_mix_r._optim == {"weight_decay": 0.0}


@pytest.mark.parametrize("channel_mix", [False, True])
def test_mixer_is_the_written_out_block(channel_mix):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("rwkv", 6, channel_mix=channel_mix, dtype=torch.float64)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    mix = lambda mu, a, b: mu * a + (1 - mu) * b  # noqa: E731
    k = mixer.key(mix(mixer.time_mix_k, x, xx))
    v = mixer.value(mix(mixer.time_mix_v, x, xx))
    r = mixer.receptance(mix(mixer.time_mix_r, x, xx))
    want = mixer.output(torch.sigmoid(r) * _naive_wkv(k, v, torch.exp(mixer.time_decay), mixer.time_first))
    if channel_mix:
        h = torch.nn.functional.layer_norm(x + want, (6,), mixer.ffn_norm.weight, mixer.ffn_norm.bias)
        hh = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
        kk = torch.relu(mixer.ffn_key(mix(mixer.ffn_mix_k, h, hh))) ** 2
        want = want + torch.sigmoid(mixer.ffn_receptance(mix(mixer.ffn_mix_r, h, hh))) * mixer.ffn_value(kk)
    y, state = mixer(x, return_state=True)
    assert_close(y, want, atol=1e-12, name="rwkv mixer vs the written-out formulas")
    assert_close(state["x_prev"], x[:, -1], atol=0, name="token-shift state")


def test_bad_options():
    with pytest.raises(ValueError, match="layer_id"):
        ssmlab.create_mixer("rwkv", 16, layer_id=4, n_layers=4)
    with pytest.raises(ValueError, match="ffn_mult"):
        ssmlab.create_mixer("rwkv", 16, ffn_mult=0)
