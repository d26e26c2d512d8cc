"""Run a grid of models x tasks x seeds (see ssmlab.experiment), one run after another, recording each in the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ssmlab.models import create_model
from ssmlab.store import ResultStore, environment_fingerprint
from ssmlab.tasks import create_task
from ssmlab.train.trainer import TrainConfig, train


@dataclass
class RunSpec:
    mixer: str | list[str]  # a list is a hybrid stack, one mixer per layer
    task: str
    seed: int = 0
    task_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    d_model: int = 64
    n_layers: int = 2


# Task options of the quick suite (ssmlab/suites/quick.yaml), used by `ssmlab train` for those tasks.
QUICK_TASKS = {
    "mqar": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4, "n_train": 4096, "n_test": 256},
    "selective-copying": {"vocab_size": 16, "seq_len": 32, "num_tokens": 4, "n_train": 4096, "n_test": 256},
}


def run_config(spec: RunSpec, config: TrainConfig) -> dict:
    """The configuration recorded with a run; a sweep skips a run whose configuration is already finished.
    Display settings (the progress bar) are not part of it."""
    train = asdict(config)
    train.pop("progress", None)
    return {"run": asdict(spec), "train": train}


def execute(spec: RunSpec, config: TrainConfig, store: ResultStore, *, suite: str, environment=None) -> int:
    """Train one run and record it; returns the run id. A failure is recorded and re-raised."""
    task = create_task(spec.task, seed=spec.seed, **spec.task_options)
    torch.manual_seed(spec.seed)
    model = create_model(spec.mixer, head=task.head, d_model=spec.d_model, n_layers=spec.n_layers,
                         **task.model_options(), **spec.model_options)
    label = spec.mixer if isinstance(spec.mixer, str) else "+".join(spec.mixer)
    run_id = store.start_run(suite=suite, model=label, task=spec.task, seed=spec.seed, config=run_config(spec, config),
                             environment=environment or environment_fingerprint())
    try:
        cfg = TrainConfig(**{**asdict(config), "seed": spec.seed})
        result = train(model, task, cfg, description=f"{spec.mixer} on {spec.task}")
    except BaseException as exc:
        store.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    store.finish_run(run_id, metrics=result.metrics, n_params=result.n_params, wall_time_s=result.wall_time_s,
                     peak_memory_mb=result.peak_memory_mb, curves=result.curves)
    return run_id
