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
    label: str | None = None  # the model's name in the results (default: the mixer, or mixers joined by +)
    train_options: dict = field(default_factory=dict)  # trainer settings of this run over the sweep's
    # The learning-rate grid this run is one trial of (its own lr is train_options["lr"]); None: no sweep.
    # The report chooses among the trials of one grid on the validation split (ssmlab.report.leaderboard).
    lr_grid: list[float] | None = None
    param_budget: int | None = None  # the parameter budget d_model was chosen for (ssmlab.experiment)


def _quick_tasks() -> dict[str, dict]:
    """The task options of the quick suite (``ssmlab/suites/quick.yaml``), which ``ssmlab train`` uses for those
    tasks, read from the suite itself so that the two never disagree."""
    from ssmlab.experiment import load_raw

    tasks = load_raw("quick")[0].get("tasks", [])
    return {t["name"]: dict(t.get("options", {})) for t in tasks if isinstance(t, dict) and t.get("options")}


QUICK_TASKS = _quick_tasks()


def run_config(spec: RunSpec, config: TrainConfig) -> dict:
    """The configuration recorded with a run; a sweep skips a run whose configuration is already finished.
    Display settings (the progress bar) are not part of it."""
    train = asdict(config)
    for key in ("progress", "checkpoint_dir"):  # display and where checkpoints go: not the run's identity
        train.pop(key, None)
    return {"run": asdict(spec), "train": train}


def checkpoint_dir_for(spec: RunSpec, config: TrainConfig, root) -> str:
    """A checkpoint directory of its own for each run configuration under ``root``, so that a sweep
    started again resumes each unfinished run from its last checkpoint."""
    import hashlib
    import json
    from pathlib import Path

    key = hashlib.sha256(json.dumps(run_config(spec, config), sort_keys=True).encode()).hexdigest()[:16]
    return str(Path(root) / f"{model_label(spec)}-{spec.task}-{spec.seed}-{key}")


def train_spec(spec: RunSpec, config: TrainConfig, checkpoint_root=None):
    """Build the task and model of ``spec`` and train it; returns the trainer's ``TrainResult``. No store.

    With ``checkpoint_root`` (and no ``config.checkpoint_dir``), the run checkpoints to its own
    directory under it and resumes from there if it was interrupted.
    """
    if checkpoint_root is not None and config.checkpoint_dir is None:
        config = TrainConfig(**{**asdict(config), "checkpoint_dir": checkpoint_dir_for(spec, config, checkpoint_root)})
    task = create_task(spec.task, seed=spec.seed, **spec.task_options)
    torch.manual_seed(spec.seed)
    model = create_model(spec.mixer, head=task.head, d_model=spec.d_model, n_layers=spec.n_layers,
                         **task.model_options(), **spec.model_options)
    cfg = TrainConfig(**{**asdict(config), **spec.train_options, "seed": spec.seed})
    return train(model, task, cfg, description=f"{model_label(spec)} on {spec.task}")


def model_label(spec: RunSpec) -> str:
    if spec.label:
        return spec.label
    return spec.mixer if isinstance(spec.mixer, str) else "+".join(spec.mixer)


def _start(store: ResultStore, spec: RunSpec, config: TrainConfig, suite: str, environment) -> int:
    return store.start_run(suite=suite, model=model_label(spec), task=spec.task, seed=spec.seed,
                           config=run_config(spec, config), environment=environment or environment_fingerprint())


def _finish(store: ResultStore, run_id: int, result) -> None:
    store.finish_run(run_id, metrics=result.metrics, n_params=result.n_params, wall_time_s=result.wall_time_s,
                     peak_memory_mb=result.peak_memory_mb, curves=result.curves)


def execute(spec: RunSpec, config: TrainConfig, store: ResultStore, *, suite: str, environment=None,
            checkpoint_root=None) -> int:
    """Train one run in this process and record it; returns the run id. A failure is recorded and re-raised."""
    run_id = _start(store, spec, config, suite, environment)
    try:
        result = train_spec(spec, config, checkpoint_root)
    except BaseException as exc:
        store.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    _finish(store, run_id, result)
    return run_id


def _train_remote(spec: dict, config: dict, checkpoint_root):
    """What a Ray worker runs: rebuild the spec and config from plain dicts and train."""
    return train_spec(RunSpec(**spec), TrainConfig(**config), checkpoint_root)


def execute_ray(specs: list[RunSpec], config: TrainConfig, store: ResultStore, *, suite: str,
                address: str | None = None, num_cpus_per_run: float = 1, environment=None, checkpoint_root=None):
    """Send every run to a Ray cluster and record the results as they arrive; the driver alone writes the store.

    ``address`` is the cluster's (``ray://host:10001`` or ``host:6379``); None starts a local
    Ray instance. The workers must have ssmlab and its dependencies installed. Yields
    ``(spec, run_id, error)`` per finished run, ``error`` None or the failure's text.
    """
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the Ray executor needs Ray: pip install 'ssmlab[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=num_cpus_per_run)(_train_remote)
    cfg = {k: v for k, v in asdict(config).items()}
    cfg["progress"] = False  # no progress bars from workers
    pending = {}
    for spec in specs:
        run_id = _start(store, spec, config, suite, environment)
        pending[remote.remote(asdict(spec), cfg, checkpoint_root and str(checkpoint_root))] = (spec, run_id)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            spec, run_id = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # a RayTaskError wrapping the worker's exception
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
                store.fail_run(run_id, error)
                yield spec, run_id, error
                continue
            _finish(store, run_id, result)
            yield spec, run_id, None
