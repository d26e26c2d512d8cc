"""Every causal mixer, in a 2-layer model, trains on a tiny MQAR without NaN and its loss falls."""

import pytest
import torch

import ssmlab
from ssmlab.tasks import create_task
from ssmlab.train import TrainConfig, train
from tests.mixers.variants import first_variant

CAUSAL_MIXERS = [n for n in ssmlab.list_mixers() if ssmlab.registry.get("mixer", n).obj.causal]


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_two_layer_model_learns_tiny_mqar(mixer):
    task = create_task("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2, n_train=512, n_test=64)
    torch.manual_seed(0)
    options = first_variant(mixer)
    model = ssmlab.create_model(mixer, d_model=32, n_layers=2, mixer_options=options, **task.model_options())
    result = train(model, task, TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10, log_every=10,
                                            progress=False))
    losses = [v for _, split, name, v in result.curves if split == "train" and name == "loss"]
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"{mixer}: loss went from {first:.3f} to {last:.3f}"
