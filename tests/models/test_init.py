import math

import pytest
import torch

import ssmlab
from ssmlab.models.backbone import RESIDUAL_OUTPUTS, Backbone, create_mixer
from tests.mixers.variants import first_variant

MIXERS = ssmlab.list_mixers()
CAUSAL_MIXERS = [n for n in MIXERS if ssmlab.registry.get("mixer", n).obj.causal]


def _options(mixer: str) -> dict:
    return first_variant(mixer)


@pytest.mark.parametrize("d_model", [16, 64])
@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_initial_lm_loss_is_near_log_vocab(mixer, d_model):
    vocab = 64
    torch.manual_seed(0)
    model = ssmlab.create_model(mixer, head="lm", d_model=d_model, n_layers=2, vocab_size=vocab,
                                mixer_options=_options(mixer))
    ids = torch.randint(0, vocab, (4, 33))
    with torch.no_grad():
        logits = model(ids[:, :-1])  # (B, L, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
    assert abs(loss - math.log(vocab)) < 0.3, f"{mixer} at d_model={d_model}: initial loss {loss:.2f}, ln V = " \
                                              f"{math.log(vocab):.2f}"


@pytest.mark.parametrize("d_model", [16, 64])
def test_untied_lm_head_initial_loss_and_embedding_scale(d_model):
    vocab = 64
    torch.manual_seed(0)
    model = ssmlab.create_model("mamba", d_model=d_model, n_layers=2, vocab_size=vocab, tie_embeddings=False)
    assert model.encoder.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    ids = torch.randint(0, vocab, (4, 33))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).item()
    assert abs(loss - math.log(vocab)) < 0.3, f"untied head: initial loss {loss:.2f}"


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("mlp", [False, True])
def test_init_only_rescales_residual_outputs(mixer, mlp):
    """Every mixer parameter equals that of the mixer built alone with the same seed, except the
    residual-branch output projections, which are divided by sqrt(n_residuals * n_layers)."""
    n_layers = 3
    options = _options(mixer)
    torch.manual_seed(0)
    alone = create_mixer(mixer, 16, **options)
    torch.manual_seed(0)
    backbone = Backbone(mixer, 16, n_layers, mlp=mlp, mixer_options=options)
    scale = 1 / math.sqrt((2 if mlp else 1) * n_layers)
    built = dict(backbone.layers[0].mixer.named_parameters())
    rescaled = 0
    for name, expected in alone.named_parameters():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in RESIDUAL_OUTPUTS:
            owner = alone.get_submodule(".".join(parts[:-2])) if len(parts) > 2 else alone
            if getattr(owner, "glu", False) is True:
                half = expected.shape[0] // 2
                expected = torch.cat([expected[:half] * scale, expected[half:]])
            else:
                expected = expected * scale
            rescaled += 1
        torch.testing.assert_close(built[name], expected, rtol=1e-6, atol=0, msg=f"{mixer}: {name}")
    if mixer not in ("lru", "s5", "mega"):
        assert rescaled > 0, f"{mixer}: no residual output projection found"
    if mlp:
        # PyTorch's default draws fc_out from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); here it is scaled.
        fc_out = backbone.layers[0].mlp.fc_out
        assert fc_out.weight.abs().max().item() <= scale / math.sqrt(fc_out.in_features) + 1e-7
