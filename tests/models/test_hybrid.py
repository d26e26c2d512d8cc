import pytest
import torch

import ssmlab
from ssmlab.models import hybrid_pattern
from tests.utils import assert_close


def test_jamba_pattern():
    assert hybrid_pattern(8, 8) == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert hybrid_pattern(6, 3, base="s4d") == ["s4d", "attention", "s4d", "s4d", "attention", "s4d"]
    with pytest.raises(ValueError, match="every"):
        hybrid_pattern(4, 0)


def test_hybrid_model_layers_options_and_step():
    torch.manual_seed(0)
    pattern = hybrid_pattern(4, 2, base="mamba2")
    model = ssmlab.create_model(pattern, d_model=16, n_layers=4, vocab_size=11, dtype=torch.float64,
                                mixer_options={"mamba2": {"headdim": 8, "d_state": 4, "chunk_size": 3},
                                               "attention": {"n_heads": 2}})
    kinds = [type(layer.mixer).__name__ for layer in model.backbone.layers]
    assert kinds == ["Mamba2", "Attention", "Mamba2", "Attention"]
    assert model.backbone.layers[1].mixer.n_heads == 2 and model.backbone.layers[0].mixer.headdim == 8
    ids = torch.randint(0, 11, (2, 9))
    logits = model(ids)
    states = model.init_state(2, dtype=torch.float64)
    outs = []
    for t in range(9):
        out, states = model.step(ids[:, t], states)
        outs.append(out)
    assert_close(torch.stack(outs, 1), logits, atol=1e-9, name="hybrid step vs forward")
    greedy = model.generate(ids[:, :3], 4, temperature=0)
    assert greedy.shape == (2, 7)


def test_hybrid_errors():
    with pytest.raises(ValueError, match="one mixer per layer"):
        ssmlab.create_model(["mamba", "attention"], d_model=16, n_layers=3, vocab_size=5)
    with pytest.raises(ValueError, match="keyed by mixer name"):
        ssmlab.create_model(["mamba", "attention"], d_model=16, n_layers=2, vocab_size=5,
                            mixer_options={"d_state": 4})
    with pytest.raises(KeyError, match="unknown mixer"):
        ssmlab.create_model(["mamba", "atention"], d_model=16, n_layers=2, vocab_size=5)
