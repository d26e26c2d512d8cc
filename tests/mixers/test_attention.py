import math

import pytest
import torch

import ssmlab
from ssmlab.layers import RotaryEmbedding, apply_rotary
from tests.utils import assert_close


def _explicit_attention(mixer, x, window):
    """Softmax attention with an explicit banded causal mask, written out in float64."""
    batch, length, _ = x.shape
    h, e = mixer.n_heads, mixer.head_dim
    q, k, v = mixer.qkv(x).view(batch, length, 3, h, e).permute(2, 0, 3, 1, 4)  # (B, H, L, E) each
    if mixer.rotary:
        positions = torch.arange(length)
        q, k = apply_rotary(q, positions, base=mixer.rotary_base), apply_rotary(k, positions, base=mixer.rotary_base)
    scores = q @ k.transpose(-1, -2) / math.sqrt(e)  # (B, H, L, L)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    allowed = (j <= i) & (j > i - window)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(batch, length, h * e)
    return mixer.out_proj(y)


@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("rotary", [True, False])
def test_window_is_a_banded_mask(window, rotary):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("attention", 16, n_heads=2, window=window, rotary=rotary, dtype=torch.float64)
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    want = _explicit_attention(mixer, x, window)
    assert_close(mixer(x), want, atol=1e-12, name="windowed attention vs explicit banded mask")
    # The same through the cache: one piece, then position by position.
    y1, state = mixer(x[:, :11], return_state=True)
    assert state["k"].shape[2] == min(11, window - 1) and state["pos"].tolist() == [11, 11]
    outs = [y1]
    for t in range(11, 20):
        y_t, state = mixer.step(x[:, t], state)
        assert state["k"].shape[2] == min(t + 1, window - 1)
        outs.append(y_t[:, None])
    assert_close(torch.cat(outs, 1), want, atol=1e-12, name="windowed attention through a truncated cache")


def test_full_attention_is_the_explicit_causal_mask():
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("attention", 16, n_heads=4, dtype=torch.float64)
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    assert_close(mixer(x), _explicit_attention(mixer, x, window=15), atol=1e-12, name="causal attention")
    _, state = mixer(x, return_state=True)
    assert state["k"].shape[2] == 15  # no window: the cache keeps everything


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_is_a_complex_rotation(interleaved):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    positions = torch.tensor([0, 1, 2, 5, 11, 100, 4096])
    theta = 500.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    if interleaved:
        z = torch.complex(x[..., 0::2], x[..., 1::2])
    else:
        z = torch.complex(x[..., :4], x[..., 4:])
    rotated = z * torch.polar(torch.ones(7, 4, dtype=torch.float64), positions[:, None] * theta)
    want = torch.stack([rotated.real, rotated.imag], -1).flatten(-2) if interleaved else \
        torch.cat([rotated.real, rotated.imag], -1)
    got = RotaryEmbedding(8, base=500.0, interleaved=interleaved)(x, positions)
    assert_close(got, want, atol=1e-12, name="rotary vs complex rotation")


def test_rotary_scores_are_relative():
    torch.manual_seed(0)
    q, k = torch.randn(2, 9, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    positions = torch.arange(9)
    scores = apply_rotary(q, positions) @ apply_rotary(k, positions).transpose(-1, -2)
    for shift in (1, 17, 1000):
        shifted = apply_rotary(q, positions + shift) @ apply_rotary(k, positions + shift).transpose(-1, -2)
        assert_close(shifted, scores, atol=1e-10, name=f"scores with positions shifted by {shift}")
    # The rotation is not the identity: unrotated scores differ.
    assert (q @ k.transpose(-1, -2) - scores).abs().max() > 1e-3


def test_attention_output_is_invariant_to_a_position_offset():
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("attention", 16, n_heads=2, dtype=torch.float64)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    state = mixer.init_state(2, dtype=torch.float64)
    state["pos"] = torch.tensor([37, 5000])
    y, new_state = mixer(x, state, return_state=True)
    assert_close(y, mixer(x), atol=1e-10, name="attention with all positions shifted")
    assert new_state["pos"].tolist() == [47, 5010]
    # The rotation is not a no-op: the same weights without it give another output.
    plain = ssmlab.create_mixer("attention", 16, n_heads=2, rotary=False, dtype=torch.float64)
    plain.load_state_dict(mixer.state_dict())
    assert (plain(x) - mixer(x)).abs().max() > 1e-3


def test_bad_options():
    with pytest.raises(ValueError, match="window"):
        ssmlab.create_mixer("attention", 16, window=0)
    with pytest.raises(ValueError, match="even head size"):
        ssmlab.create_mixer("attention", 6, n_heads=2)
    with pytest.raises(ValueError, match="rotary_base"):
        ssmlab.create_mixer("attention", 16, rotary_base=1.0)
    assert ssmlab.create_mixer("attention", 6, n_heads=2, rotary=False).head_dim == 3
    with pytest.raises(ValueError, match="even head size"):
        RotaryEmbedding(5)
