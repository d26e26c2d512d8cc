import pytest
import torch

import ssmlab
from ssmlab.mixers.base import set_optim
from ssmlab.tasks import create_task
from ssmlab.train import TrainConfig, make_optimizer, train
from ssmlab.train.trainer import warmup_cosine


def test_loss_falls_and_metrics_reported():
    task = create_task("selective-copying", vocab_size=6, seq_len=8, num_tokens=2, n_train=512, n_test=64)
    torch.manual_seed(0)
    model = ssmlab.create_model("attention", d_model=32, n_layers=1, **task.model_options())
    result = train(model, task, TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5, progress=False))
    losses = [v for _, split, name, v in result.curves if split == "train" and name == "loss"]
    assert losses[-1] < losses[0] * 0.8
    assert set(result.metrics) == {"test_loss", "test_accuracy", "val_loss", "val_accuracy", "train_loss"}
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
    assert result.n_params == sum(p.numel() for p in model.parameters())


def test_optimizer_groups_follow_parameter_hints():
    model = ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=5)
    special = model.backbone.layers[0].mixer.qkv.weight
    set_optim(special, weight_decay=0.0, lr=1e-4)
    opt = make_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(special)]["lr"] == 1e-4 and by_param[id(special)]["weight_decay"] == 0.0
    assert by_param[id(model.backbone.layers[0].mixer.out_proj.weight)]["weight_decay"] == 0.1
    assert by_param[id(model.backbone.norm_f.weight)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    values = [warmup_cosine(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] >= 0.1 and values[-1] < 0.11


def test_bad_config():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
