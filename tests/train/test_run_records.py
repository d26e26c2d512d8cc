"""Truthful records: a resumed run's wall time includes the time before the interruption, and the CPU peak
memory is the run's own, not the high-water mark of everything the process did before it."""

import os
import resource
import sys
from types import SimpleNamespace

import pytest
import torch

from ssmlab.train import TrainConfig, checkpoint, train, trainer
from tests.train.helpers import Killed, interrupt_after_checkpoint, model, mqar


def test_wall_time_after_a_resume_counts_the_time_before_it(tmp_path, monkeypatch):
    """A fake clock that moves 1 ms per reading: the first attempt also spends 1000 s between its step-1
    and step-2 checkpoints and is killed after the second; the attempt that resumes is quick."""
    clock = [0.0]

    def perf_counter():
        clock[0] += 0.001
        return clock[0]

    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=perf_counter))
    saved = checkpoint.save

    def save_then_spend_1000_s(directory, **kw):
        path = saved(directory, **kw)
        if kw["step"] == 1:
            clock[0] += 1000.0
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_spend_1000_s)
    interrupt_after_checkpoint(monkeypatch, at_step=2)
    cfg = TrainConfig(steps=4, batch_size=8, progress=False, checkpoint_every=1, checkpoint_dir=str(tmp_path))
    task = mqar()
    with pytest.raises(Killed):
        train(model(task), task, cfg)
    monkeypatch.setattr(checkpoint, "save", saved)
    assert 1000.0 < train(model(task), task, cfg).wall_time_s < 1001.0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="the per-run CPU peak needs Linux's /proc/self/clear_refs")
def test_cpu_peak_memory_is_the_runs_own():
    big = torch.ones(64 * 2**20)  # 256 MiB, touched, then freed before the run
    del big
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    task = mqar()
    result = train(model(task), task, TrainConfig(steps=2, batch_size=8, progress=False))
    assert 0 < result.peak_memory_mb < process_peak_mb - 128
