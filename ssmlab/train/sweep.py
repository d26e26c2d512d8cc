"""Run a grid of mixers x tasks x seeds, one run after another, recording each in the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ssmlab import registry
from ssmlab.models import create_model
from ssmlab.store import ResultStore, environment_fingerprint
from ssmlab.tasks import create_task
from ssmlab.train.trainer import TrainConfig, train


@dataclass
class RunSpec:
    mixer: str
    task: str
    seed: int = 0
    task_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    d_model: int = 64
    n_layers: int = 2


# The default suite of `ssmlab run`: small recall and copying problems that train in seconds on a CPU.
QUICK_TASKS = {
    "mqar": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4, "n_train": 4096, "n_test": 256},
    "selective-copying": {"vocab_size": 16, "seq_len": 32, "num_tokens": 4, "n_train": 4096, "n_test": 256},
}


def quick_suite(mixers: list[str] | None = None, tasks: list[str] | None = None, seeds=(0,)) -> list[RunSpec]:
    """Every registered mixer (causal ones only on token-level tasks) on the quick tasks."""
    mixers = mixers or registry.names("mixer")
    tasks = tasks or list(QUICK_TASKS)
    specs = []
    for task in tasks:
        registry.get("task", task)
        for mixer in mixers:
            cls = registry.get("mixer", mixer).obj
            if registry.get("task", task).obj.head == "lm" and not cls.causal:
                continue
            for seed in seeds:
                specs.append(RunSpec(mixer, task, seed, dict(QUICK_TASKS.get(task, {}))))
    return specs


def execute(spec: RunSpec, config: TrainConfig, store: ResultStore, *, suite: str, environment=None) -> int:
    """Train one run and record it; returns the run id. A failure is recorded and re-raised."""
    task = create_task(spec.task, seed=spec.seed, **spec.task_options)
    torch.manual_seed(spec.seed)
    model = create_model(spec.mixer, head=task.head, d_model=spec.d_model, n_layers=spec.n_layers,
                         **task.model_options(), **spec.model_options)
    run_config = {"run": asdict(spec), "train": asdict(config)}
    run_id = store.start_run(suite=suite, model=spec.mixer, task=spec.task, seed=spec.seed, config=run_config,
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
