"""Non-finite losses, gradients, parameters and metrics fail the run with one line; bad settings are refused."""

import math

import pytest
import torch
from torch import nn

from ssmlab.store import ResultStore
from ssmlab.train import TrainConfig, train, trainer
from ssmlab.train.sweep import RunSpec, execute
from tests.train.helpers import MQAR, model, mqar

CONFIG = dict(steps=6, batch_size=8, warmup_steps=0, progress=False)


def test_a_nan_final_evaluation_fails_the_run_instead_of_finishing_it(tmp_path, monkeypatch):
    evaluate = trainer.evaluate

    def nan_loss(*args, **kw):
        return {**evaluate(*args, **kw), "loss": math.nan}

    monkeypatch.setattr(trainer, "evaluate", nan_loss)
    task = mqar()
    with pytest.raises(FloatingPointError) as info:
        train(model(task), task, TrainConfig(**CONFIG))
    assert isinstance(info.value, trainer.TrainingDiverged)
    assert "\n" not in str(info.value) and "test_loss is nan" in str(info.value)
    with ResultStore(tmp_path / "results.sqlite") as store:
        try:
            execute(RunSpec("attention", "mqar", 0, dict(MQAR), {}, d_model=16, n_layers=1), TrainConfig(**CONFIG),
                    store, suite="s")
        except FloatingPointError:
            pass
        [run] = store.runs(status=None)
    assert run["status"] == "failed" and "test_loss is nan" in run["metrics"]["error"]


def test_an_infinite_gradient_names_its_step(monkeypatch):
    """A gradient that overflows while the loss is finite: the step where it happened, not the next one's NaN."""
    task = mqar()
    net = model(task)
    calls = []

    def overflow_at_step_3(grad):
        calls.append(None)
        return grad * math.inf if len(calls) == 4 else grad

    net.lm_head.weight.register_hook(overflow_at_step_3)
    with pytest.raises(FloatingPointError) as info:
        train(net, task, TrainConfig(**CONFIG))
    message = str(info.value)
    assert "\n" not in message and "gradient norm became" in message and "at step 3" in message, message


class _Kernel(nn.Module):
    """A language model whose kernel fails on non-finite weights, as FFT and scan kernels can."""

    def __init__(self, vocab_size):
        super().__init__()
        self.embed, self.proj = nn.Embedding(vocab_size, 8), nn.Linear(8, vocab_size)

    def forward(self, x):
        if not torch.isfinite(self.proj.weight).all():
            raise RuntimeError("kernel failed: invalid argument")
        return self.proj(self.embed(x))


def test_parameters_that_overflow_are_divergence_not_a_kernel_error():
    """The optimiser step of step 2 overflows a weight; step 3's kernel then fails on it."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    net, steps = _Kernel(MQAR["vocab_size"]), []

    def overflow(optimizer, args, kwargs):
        steps.append(None)
        if len(steps) == 3:
            with torch.no_grad():
                net.proj.weight[0, 0] = math.inf

    handle = register_optimizer_step_post_hook(overflow)
    try:
        with pytest.raises(FloatingPointError) as info:
            train(net, mqar(), TrainConfig(**CONFIG))
    finally:
        handle.remove()
    message = str(info.value)
    assert "\n" not in message and "proj.weight" in message and "after step 2" in message, message
    assert "step 3 then failed with RuntimeError" in message, message


@pytest.mark.parametrize("field, value", [
    ("min_lr_ratio", -0.1), ("min_lr_ratio", 1.5), ("weight_decay", -0.01), ("grad_clip", 0.0),
    ("grad_clip", -1.0), ("betas", (1.0, 0.9)), ("betas", (0.9, -0.1)), ("betas", (0.9,)), ("lr", math.nan),
    ("lr", math.inf), ("steps", 2.5), ("warmup_steps", 1.5), ("batch_size", True),
])
def test_bad_trainer_settings_are_one_line_errors_naming_the_field(field, value):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert f"TrainConfig.{field} must be" in message and "\n" not in message, message
