import pytest
import torch
import torch.nn.functional as F

import ssmlab
from ssmlab.mixers.linear_attention import causal_linear_attention, causal_linear_attention_step
from tests.utils import assert_close


def _recurrent(q, k, v, log_decay, state):
    outs = []
    for t in range(q.shape[1]):
        y_t, state = causal_linear_attention_step(q[:, t], k[:, t], v[:, t], state, log_decay=log_decay)
        outs.append(y_t)
    return torch.stack(outs, 1), state


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("length, chunk", [(1, 4), (2, 1), (7, 3), (64, 16), (65, 16), (130, 64)])
def test_parallel_chunkwise_recurrent_agree(length, chunk, decay):
    g = torch.Generator().manual_seed(length)
    q, k = (torch.randn(2, length, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, length, 3, 5, generator=g, dtype=torch.float64)
    s0 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    log_decay = torch.log(torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)) if decay else None
    want, want_state = _recurrent(q, k, v, log_decay, s0)
    for chunk_size in (None, chunk):
        y, state = causal_linear_attention(q, k, v, log_decay=log_decay, initial_state=s0, chunk_size=chunk_size)
        form = "parallel" if chunk_size is None else f"chunkwise({chunk_size})"
        assert_close(y, want, atol=1e-10, rtol=1e-10, name=f"{form} output vs recurrent")
        assert_close(state, want_state, atol=1e-10, rtol=1e-10, name=f"{form} final state vs recurrent")


def test_recurrence_is_the_explicit_sum():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 6, 2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 6, 2, 4, generator=g, dtype=torch.float64)
    gamma = torch.tensor([0.7, 0.95], dtype=torch.float64)
    y, _ = _recurrent(q, k, v, torch.log(gamma), torch.zeros(1, 2, 3, 4, dtype=torch.float64))
    for i in range(6):
        want = sum(gamma[:, None] ** (i - j) * (q[0, i] * k[0, j]).sum(-1, keepdim=True) * v[0, j]
                   for j in range(i + 1))
        assert_close(y[0, i], want, atol=1e-12, name=f"y[{i}]")


def test_gradients_of_the_forms_agree():
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 11, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    log_decay = torch.tensor([-0.1, -0.5], dtype=torch.float64, requires_grad=True)
    grads = []
    for chunk_size in (None, 4):
        y, state = causal_linear_attention(*inputs, log_decay=log_decay, chunk_size=chunk_size)
        grads.append(torch.autograd.grad(y.square().sum() + state.square().sum(), inputs + [log_decay]))
    for name, a, b in zip(["q", "k", "v", "log_decay"], *grads):
        assert_close(b, a, atol=1e-10, rtol=1e-10, name=f"grad of {name}: chunkwise vs parallel")


@pytest.mark.parametrize("feature_map, phi", [("elu", lambda t: F.elu(t) + 1), ("relu", F.relu)])
def test_mixer_is_normalised_linear_attention(feature_map, phi):
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("linear-attention", 16, n_heads=4, feature_map=feature_map, chunk_size=5,
                                dtype=torch.float64)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    q, k, v = (phi(t) if i < 2 else t for i, t in enumerate(mixer.qkv(x).view(2, 13, 3, 4, 4).unbind(2)))
    # Attention weights phi(q_i) . phi(k_j) over j <= i, normalised by their sum (eq. 4 of the paper).
    weights = torch.einsum("bihe,bjhe->bhij", q, k) * torch.ones(13, 13, dtype=torch.bool).tril()
    y = torch.einsum("bhij,bjhe->bihe", weights, v) / (weights.sum(-1).transpose(1, 2)[..., None] + mixer.eps)
    want = mixer.out_proj(y.flatten(-2))
    assert_close(mixer(x), want, atol=1e-12, name="chunkwise mixer vs normalised attention weights")
    mixer.form = "parallel"
    assert_close(mixer(x), want, atol=1e-12, name="parallel mixer vs normalised attention weights")


def test_elu_feature_map_keeps_the_normaliser_positive():
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("linear-attention", 16, n_heads=2, dtype=torch.float64)
    _, state = mixer(10 * torch.randn(3, 40, 16, dtype=torch.float64), return_state=True)
    assert (state["z"] > 0).all()


def test_bad_options():
    with pytest.raises(ValueError, match="feature_map"):
        ssmlab.create_mixer("linear-attention", 16, feature_map="softmax")
    with pytest.raises(ValueError, match="form"):
        ssmlab.create_mixer("linear-attention", 16, form="recurrent")
    with pytest.raises(ValueError, match="chunk_size"):
        ssmlab.create_mixer("linear-attention", 16, chunk_size=0)
    with pytest.raises(ValueError, match="divisible"):
        ssmlab.create_mixer("linear-attention", 16, n_heads=3)
