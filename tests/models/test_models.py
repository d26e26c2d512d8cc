import pytest
import torch

import ssmlab
from tests.mixers.variants import first_variant
from tests.utils import assert_close

CAUSAL_MIXERS = [n for n in ssmlab.list_mixers() if ssmlab.registry.get("mixer", n).obj.causal]


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_lm_step_matches_forward(mixer):
    torch.manual_seed(0)
    options = first_variant(mixer)
    model = ssmlab.create_model(mixer, head="lm", d_model=16, n_layers=2, vocab_size=11, dtype=torch.float64,
                                mixer_options=options)
    ids = torch.randint(0, 11, (2, 7))
    logits = model(ids)
    assert logits.shape == (2, 7, 11)
    states = model.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(7):
        out, states = model.step(ids[:, t], states)
        steps.append(out)
    assert_close(torch.stack(steps, 1), logits, atol=1e-9, rtol=1e-9, name="model step vs forward")


def test_lm_ties_embeddings_and_counts_once():
    model = ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=11)
    assert model.lm_head.weight is model.encoder.embed.weight
    untied = ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=11, tie_embeddings=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(model) == 11 * 16


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_pooling_respects_lengths(pooling):
    torch.manual_seed(0)
    model = ssmlab.create_model("attention", head="classify", d_model=16, n_layers=1, n_classes=3, input_dim=4,
                                pooling=pooling, dtype=torch.float64)
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    lengths = torch.tensor([5, 9])
    padded = x.clone()
    padded[0, 5:] = 123.0  # junk after the length must not matter
    out = model(padded, lengths)
    assert out.shape == (2, 3)
    assert_close(out[0], model(x[:1, :5])[0], atol=1e-10, name="padded vs unpadded row")


def test_model_input_errors():
    lm = ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=11)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        lm(torch.tensor([[3, 11]]))
    with pytest.raises(ValueError, match="integer ids"):
        lm(torch.randn(1, 3))
    clf = ssmlab.create_model("attention", head="classify", d_model=16, n_layers=1, n_classes=3, input_dim=4)
    with pytest.raises(ValueError, match=r"\(B, L, 4\)"):
        clf(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="pooling"):
        ssmlab.create_model("attention", head="classify", d_model=16, n_layers=1, n_classes=3, input_dim=4,
                            pooling="max")
    with pytest.raises(KeyError, match="unknown mixer"):
        ssmlab.create_model("nope", d_model=16, n_layers=1, vocab_size=3)
    with pytest.raises(KeyError, match="unknown model"):
        ssmlab.create_model("attention", head="nope", d_model=16, n_layers=1, vocab_size=3)
    with pytest.raises(ValueError, match="bad options"):
        ssmlab.create_mixer("attention", 16, wrong_option=1)
