import math

import pytest
import torch

import ssmlab
from ssmlab.ops.wkv import reference as wkv_reference
from ssmlab.ops.wkv import wkv_op
from tests.ops.test_wkv import naive_wkv
from tests.utils import assert_close


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
    want = mixer.output(torch.sigmoid(r) * naive_wkv(k, v, torch.exp(mixer.time_decay), mixer.time_first))
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


def test_forward_and_step_use_the_wkv_op(monkeypatch):
    """``forward`` runs ``ssmlab.ops.wkv`` (its default backend, ``torch`` on CPU), ``step`` ``wkv_step``."""
    monkeypatch.delenv("SSMLAB_WKV_BACKEND", raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    calls = []
    for b in ("reference", "torch"):
        fn = wkv_op.resolve(b)
        monkeypatch.setattr(wkv_op.backends[b], "fn", lambda *a, _fn=fn, _b=b, **k: calls.append(_b) or _fn(*a, **k))
    monkeypatch.setattr(wkv_reference, "step", lambda *a, _fn=wkv_reference.step: calls.append("step") or _fn(*a))
    mixer = ssmlab.create_mixer("rwkv", 6, dtype=torch.float64)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mixer(x)
    mixer.step(x[:, 0], mixer.init_state(2))
    assert calls == ["torch", "step"]
