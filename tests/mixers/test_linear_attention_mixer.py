import pytest
import torch
import torch.nn.functional as F

import ssmlab
from ssmlab.ops.linear_attention import linear_attention_op
from tests.utils import assert_close


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


@pytest.mark.parametrize("name", ["linear-attention", "retnet"])
@pytest.mark.parametrize("form, backend", [("chunkwise", "torch"), ("parallel", "quadratic")])
def test_forms_are_backends_of_the_op(name, form, backend, monkeypatch):
    """Both mixers compute with ``ssmlab.ops.linear_attention``: the parallel form is its ``quadratic``
    backend, the chunkwise form its default (``torch`` on CPU)."""
    monkeypatch.delenv("SSMLAB_LINEAR_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("SSMLAB_BACKEND", raising=False)
    calls = []
    for b in ("reference", "quadratic", "torch"):
        fn = linear_attention_op.resolve(b)
        monkeypatch.setattr(linear_attention_op.backends[b], "fn",
                            lambda *a, _fn=fn, _b=b, **k: calls.append(_b) or _fn(*a, **k))
    mixer = ssmlab.create_mixer(name, 16, n_heads=2, form=form, chunk_size=4, dtype=torch.float64)
    mixer(torch.randn(1, 9, 16, dtype=torch.float64))
    assert calls == [backend]
