"""Gradient accumulation, schedules, bf16, early stopping, checkpoints, heads with lengths."""

import pytest
import torch

import ssmlab
from ssmlab.tasks import create_task
from ssmlab.train import TrainConfig, train
from ssmlab.train.checkpoint import CheckpointError
from ssmlab.train.trainer import warmup_cosine


def _mqar(**kw):
    return create_task("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2, n_train=64, n_test=16, **kw)


def _model(mixer="attention", task=None, **kw):
    torch.manual_seed(0)
    task = task or _mqar()
    return ssmlab.create_model(mixer, head=task.head, d_model=16, n_layers=1, **task.model_options(), **kw)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_equals_the_full_batch():
    cfg = dict(steps=5, batch_size=8, lr=1e-2, warmup_steps=1, progress=False)
    full, accumulated = _model(), _model()
    train(full, _mqar(), TrainConfig(**cfg))
    train(accumulated, _mqar(), TrainConfig(**cfg, grad_accum_steps=4))
    assert (_params(full) - _params(accumulated)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="divisible by grad_accum_steps"):
        TrainConfig(batch_size=8, grad_accum_steps=3)


def test_constant_schedule_and_bad_options():
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule="constant")
    assert [warmup_cosine(s, cfg) for s in (0, 9, 50, 99)] == [0.1, 1.0, 1.0, 1.0]
    for bad in (dict(schedule="linear"), dict(precision="fp16"), dict(early_stopping_patience=2)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_bf16_autocast_trains_on_cpu():
    task = create_task("selective-copying", vocab_size=6, seq_len=8, num_tokens=2, n_train=256, n_test=32)
    for mixer in ("attention", "mamba", "s4d"):
        model = _model(mixer, task)
        result = train(model, task, TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=2, precision="bf16",
                                               progress=False))
        losses = [v for _, split, name, v in result.curves if split == "train"]
        assert all(torch.isfinite(torch.tensor(losses))), mixer
        assert losses[-1] < losses[0], mixer
        assert next(model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights


def test_early_stopping_on_the_validation_split():
    task = _mqar()
    model = _model(task=task)
    # A zero learning rate after warmup 0 never improves the validation accuracy: stop after 2 evaluations
    # without improvement, the first evaluation setting the best.
    cfg = TrainConfig(steps=50, batch_size=8, lr=1e-9, warmup_steps=0, eval_every=5, early_stopping_patience=2,
                      progress=False)
    result = train(model, task, cfg)
    assert result.metrics["stopped_at_step"] == 15
    assert {c[1] for c in result.curves} >= {"train", "val", "test"}


def test_checkpoint_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Resume from the step-6 checkpoint of a 12-step run: same parameters and metrics as never stopping."""
    import shutil

    from ssmlab.train import checkpoint

    cfg = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, progress=False)
    task = create_task("selective-copying", vocab_size=6, seq_len=8, num_tokens=2, n_train=64, n_test=16)
    straight = _model("s4d", task, dropout=0.1)  # dropout: the torch RNG state must be restored too
    expected = train(straight, task, TrainConfig(**cfg)).metrics

    saved = checkpoint.save

    def save_and_keep(directory, **kw):
        path = saved(directory, **kw)
        if kw["step"] == 6:
            (tmp_path / "at6").mkdir()
            shutil.copy(path, tmp_path / "at6" / checkpoint.FILE)
        return path

    monkeypatch.setattr(checkpoint, "save", save_and_keep)
    train(_model("s4d", task, dropout=0.1), task, TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "run"),
                                                               checkpoint_every=6))
    monkeypatch.setattr(checkpoint, "save", saved)
    resumed = _model("s4d", task, dropout=0.1)
    torch.manual_seed(123)  # whatever the process did before, the checkpoint's RNG states win
    metrics = train(resumed, task, TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "at6"))).metrics
    assert metrics == expected
    assert torch.equal(_params(resumed), _params(straight))


def test_checkpoint_of_another_model_or_run_is_a_clear_error(tmp_path):
    train(_model(), _mqar(), TrainConfig(steps=2, batch_size=8, progress=False, checkpoint_dir=str(tmp_path),
                                        keep_checkpoint=True))
    with pytest.raises(CheckpointError, match="another model.*'attention'.*'s4d'"):
        train(_model("s4d"), _mqar(), TrainConfig(steps=2, batch_size=8, progress=False, checkpoint_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        train(_model(), _mqar(), TrainConfig(steps=2, batch_size=8, lr=0.5, progress=False,
                                            checkpoint_dir=str(tmp_path)))
    (tmp_path / "checkpoint.pt").write_text("garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        train(_model(), _mqar(), TrainConfig(steps=2, batch_size=8, progress=False, checkpoint_dir=str(tmp_path)))


def test_classification_with_lengths_uses_them():
    """ListOps is right-padded; the trainer passes lengths, so the padding cannot change the result."""
    task = create_task("listops", min_length=20, max_length=60, max_depth=3, n_train=32, n_val=8, n_test=8)
    split = task.split("train")
    assert split.lengths is not None and bool((split.lengths < split.inputs.shape[1]).any())
    model = _model("mamba", task)
    result = train(model, task, TrainConfig(steps=3, batch_size=8, progress=False))
    assert set(result.metrics) >= {"test_accuracy", "test_loss"}
    # Changing the padding tokens leaves the logits alone.
    x, n = split.inputs[:4].clone(), split.lengths[:4]
    model.eval()
    with torch.no_grad():
        before = model(x, lengths=n)
        x[torch.arange(x.shape[1]) >= n[:, None]] = 3
        assert torch.allclose(model(x, lengths=n), before, atol=1e-6)
