"""Small tasks, models and an interruption for the checkpoint and divergence tests."""

import torch

import ssmlab
from ssmlab.tasks import create_task
from ssmlab.train import checkpoint

MQAR = dict(vocab_size=16, seq_len=16, num_kv_pairs=2, n_train=64, n_test=16)


def mqar(**options):
    return create_task("mqar", **{**MQAR, **options})


def model(task, mixer="attention", **options):
    torch.manual_seed(0)
    return ssmlab.create_model(mixer, head=task.head, d_model=16, n_layers=1, **task.model_options(), **options)


class Killed(KeyboardInterrupt):
    """Stands for a process killed right after a checkpoint was written."""


def interrupt_after_checkpoint(monkeypatch, at_step: int):
    """Make the trainer stop (``Killed``) right after it writes the checkpoint of ``at_step``."""
    saved = checkpoint.save

    def save_then_stop(directory, **kw):
        path = saved(directory, **kw)
        if kw["step"] == at_step:
            monkeypatch.setattr(checkpoint, "save", saved)
            raise Killed(f"killed after the checkpoint of step {at_step}")
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_stop)


def spy_on_resumes(monkeypatch) -> list:
    """Record, for every ``checkpoint.load``, the step it resumed from (None: it started afresh)."""
    loaded = checkpoint.load
    steps = []

    def load(directory, **kw):
        out = loaded(directory, **kw)
        steps.append(None if out is None else out["step"])
        return out

    monkeypatch.setattr(checkpoint, "load", load)
    return steps
