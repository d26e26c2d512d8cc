"""Run a grid of models x tasks x seeds (see ssmlab.experiment), recording each run in the store: one run after
another in this process (:func:`execute_sweep`), several at once in worker processes on this machine
(:func:`execute_parallel`) or on a Ray cluster (:func:`execute_ray`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ssmlab.experiment import RunSpec, model_label
from ssmlab.models import create_model
from ssmlab.store import ResultStore, environment_fingerprint
from ssmlab.tasks import create_task
from ssmlab.train.trainer import NOT_IN_FINGERPRINT, TrainConfig, train


def _train_identity(config: TrainConfig) -> dict:
    """The trainer settings that belong to a run's identity: all but display and checkpoint placement."""
    train = asdict(config)
    for key in ("progress", "checkpoint_dir", "keep_checkpoint"):
        train.pop(key, None)
    return train


def run_config(spec: RunSpec, config: TrainConfig, *, train: dict | None = None) -> dict:
    """The configuration recorded with a run; a sweep skips a run whose configuration is already finished.
    Display settings (the progress bar) and checkpoint placement are not part of it. ``train`` is
    ``_train_identity(config)`` when the caller has it already (a sweep computes it once); the spec's
    fields are read as they are (it holds only JSON values), not deep-copied."""
    train = _train_identity(config) if train is None else train
    return {"run": {f.name: getattr(spec, f.name) for f in fields(spec)}, "train": train}


def checkpoint_dir_for(spec: RunSpec, config: TrainConfig, root, store_id: str) -> str:
    """The checkpoint directory of one run of one store: ``root/<store id>/<label>-<task>-<seed>-<key>``,
    ``key`` a hash of the run's full configuration (its label included). A sweep started again on
    the same store resumes each unfinished run from there; another store (a fresh file in the same
    folder, say) has its own directory and never sees these checkpoints."""
    import hashlib
    import json
    import re
    from pathlib import Path

    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(store_id)):
        raise ValueError(f"checkpoint_dir_for: store_id must be letters, digits, - or _, got {store_id!r}")
    key = hashlib.sha256(json.dumps(run_config(spec, config), sort_keys=True).encode()).hexdigest()[:16]
    # The readable part never leaves the folder: the hash, not the label, makes the name unique.
    readable = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{model_label(spec)}-{spec.task}-{spec.seed}").lstrip(".")
    return str(Path(root) / str(store_id) / f"{readable[:80]}-{key}")


def train_spec(spec: RunSpec, config: TrainConfig, checkpoint_root=None, *, store_id: str | None = None,
               save_dir=None):
    """Build the task and model of ``spec`` and train it; returns the trainer's ``TrainResult``. No store.

    With ``checkpoint_root`` (and no ``config.checkpoint_dir``), the run checkpoints to its own
    directory under it (:func:`checkpoint_dir_for`, which needs the store's ``store_id``) and
    resumes from there if it was interrupted; the checkpoint's fingerprint then also holds the
    store's id and the run's configuration, and a checkpoint there that the same code, torch and
    backends did not write is discarded with a note (the run starts afresh). A finished run's
    directory is removed unless ``keep_checkpoint``.

    With ``config.checkpoint_dir`` (``ssmlab train --checkpoint-dir``), the directory is the
    caller's: its checkpoint is resumed only if its fingerprint (the run's full configuration,
    model options included) matches, and is otherwise a ``CheckpointError``.

    With ``save_dir``, the trained model is saved there with its task
    (``model.save_pretrained(save_dir, task=task)``).
    """
    managed = checkpoint_root is not None and config.checkpoint_dir is None
    run = run_config(spec, config)
    # How often checkpoints are written does not change the result: a run may resume with another interval.
    identity = {"run": {**run, "train": {k: v for k, v in run["train"].items() if k not in NOT_IN_FINGERPRINT}}}
    if managed:
        if store_id is None:
            raise ValueError("train_spec: a checkpoint_root needs the store's id (store_id=store.store_id), "
                             "so that checkpoints belong to one store")
        identity["store"] = str(store_id)
        config = TrainConfig(**{**asdict(config),
                                "checkpoint_dir": checkpoint_dir_for(spec, config, checkpoint_root, store_id)})
    task = create_task(spec.task, seed=spec.seed, **spec.task_options)
    torch.manual_seed(spec.seed)
    model = create_model(spec.mixer, head=task.head, d_model=spec.d_model, n_layers=spec.n_layers,
                         **task.model_options(), **spec.model_options)
    cfg = TrainConfig(**{**asdict(config), **spec.train_options, "seed": spec.seed})
    result = train(model, task, cfg, description=f"{model_label(spec)} on {spec.task}", identity=identity,
                   discard_mismatched_checkpoint=managed)
    if managed and not cfg.keep_checkpoint:
        _remove_empty(cfg.checkpoint_dir)
    if save_dir is not None:
        model.save_pretrained(save_dir, task=task)
    return result


def _remove_empty(directory) -> None:
    from pathlib import Path

    try:
        Path(directory).rmdir()
    except OSError:  # not empty (kept, or written by something else) or already gone
        pass


@dataclass
class Outcome:
    """What became of one run of a sweep: ``status`` is ``finished``, ``failed`` (``detail`` is the
    reason, one line) or ``skipped`` (``detail``: ``finished`` or ``running`` elsewhere; ``run_id``
    is that other run)."""

    spec: RunSpec
    run_id: int | None
    status: str
    detail: str | None = None
    metrics: dict | None = None
    wall_time_s: float | None = None
    n_params: int | None = None


def failure_reason(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters: how a failed run is recorded."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else type(exc).__name__}"
    return text if len(text) <= 300 else text[:297] + "..."


def plan(specs: list[RunSpec], config: TrainConfig, store: ResultStore, *, suite: str):
    """Split a sweep into the specs still to run and ``(spec, run id)`` of those already finished,
    with one query for the whole suite."""
    from ssmlab.store import config_hash

    finished = store.finished_configs(suite)
    train = _train_identity(config)
    todo, done = [], []
    for spec in specs:
        run_id = finished.get(config_hash(run_config(spec, config, train=train)))
        if run_id is None:
            todo.append(spec)
        else:
            done.append((spec, run_id))
    return todo, done


def _start(store: ResultStore, spec: RunSpec, config: TrainConfig, suite: str, environment) -> int:
    return store.start_run(suite=suite, model=model_label(spec), task=spec.task, seed=spec.seed,
                           config=run_config(spec, config), environment=environment or environment_fingerprint())


def _claim(store: ResultStore, spec: RunSpec, config: TrainConfig, suite: str, environment):
    return store.claim_run(suite=suite, model=model_label(spec), task=spec.task, seed=spec.seed,
                           config=run_config(spec, config), environment=environment)


def _finish(store: ResultStore, run_id: int, result) -> None:
    store.finish_run(run_id, metrics=result.metrics, n_params=result.n_params, wall_time_s=result.wall_time_s,
                     peak_memory_mb=result.peak_memory_mb, curves=result.curves)


def _finished(spec: RunSpec, run_id: int, result) -> Outcome:
    return Outcome(spec, run_id, "finished", metrics=dict(result.metrics), wall_time_s=result.wall_time_s,
                   n_params=result.n_params)


def execute(spec: RunSpec, config: TrainConfig, store: ResultStore, *, suite: str, environment=None,
            checkpoint_root=None, save_dir=None) -> int:
    """Train one run in this process and record it; returns the run id. A failure is recorded
    (Ctrl-C as ``interrupted``) and re-raised. ``save_dir``: see :func:`train_spec`."""
    run_id = _start(store, spec, config, suite, environment)
    try:
        result = train_spec(spec, config, checkpoint_root, store_id=store.store_id, save_dir=save_dir)
    except Exception as exc:
        store.fail_run(run_id, failure_reason(exc))
        raise
    except BaseException:
        store.interrupt_run(run_id)
        raise
    _finish(store, run_id, result)
    return run_id


def execute_sweep(specs: list[RunSpec], config: TrainConfig, store: ResultStore, *, suite: str,
                  environment=None, checkpoint_root=None):
    """Train ``specs`` one after another in this process; yields an :class:`Outcome` per spec.

    Each run is claimed in the store just before it trains (a configuration finished meanwhile,
    or running in another live process, is skipped). A run that raises is recorded as failed
    with its reason and the sweep goes on; Ctrl-C records the run as interrupted and stops.
    """
    environment = environment or environment_fingerprint()
    for spec in specs:
        claim = _claim(store, spec, config, suite, environment)
        if claim.run_id is None:
            yield Outcome(spec, claim.other, "skipped", claim.reason)
            continue
        try:
            result = train_spec(spec, config, checkpoint_root, store_id=store.store_id)
        except Exception as exc:
            reason = failure_reason(exc)
            store.fail_run(claim.run_id, reason)
            yield Outcome(spec, claim.run_id, "failed", reason)
            continue
        except BaseException:
            store.interrupt_run(claim.run_id)
            raise
        _finish(store, claim.run_id, result)
        yield _finished(spec, claim.run_id, result)


def _train_remote(spec: dict, config: dict, checkpoint_root, store_id=None):
    """What a Ray worker runs: rebuild the spec and config from plain dicts and train."""
    return train_spec(RunSpec(**spec), TrainConfig(**config), checkpoint_root, store_id=store_id)


def _fill(queue: list, pending: dict, slots: int, store: ResultStore, config: TrainConfig, suite: str,
          environment, submit):
    """Claim the next specs of ``queue`` and ``submit`` each until ``slots`` runs are in flight; ``pending`` maps
    what ``submit`` returned to ``(spec, run id)``. Yields an ``Outcome`` for each spec skipped because its
    configuration finished meanwhile or runs in another live process."""
    while queue and len(pending) < slots:
        spec = queue.pop(0)
        claim = _claim(store, spec, config, suite, environment)
        if claim.run_id is None:
            yield Outcome(spec, claim.other, "skipped", claim.reason)
            continue
        pending[submit(spec)] = (spec, claim.run_id)


def _train_in_worker(spec: dict, config: dict, checkpoint_root, store_id, threads: int):
    """What a worker process of :func:`execute_parallel` runs: ``threads`` torch threads, then one run."""
    torch.set_num_threads(threads)
    return train_spec(RunSpec(**spec), TrainConfig(**config), checkpoint_root, store_id=store_id)


def default_jobs(device: str = "cpu") -> int:
    """Runs at once by default: one per CPU core on the CPU (small models use one core better than two:
    their per-step operations are too small to split across threads), one on an accelerator."""
    import os

    if torch.device(device).type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def execute_parallel(specs: list[RunSpec], config: TrainConfig, store: ResultStore, *, suite: str, jobs: int,
                     environment=None, checkpoint_root=None):
    """Train ``specs`` ``jobs`` at a time in worker processes on this machine; yields an :class:`Outcome`
    per spec as runs end (not in the order of ``specs``).

    Each worker process uses ``cores // jobs`` torch threads (at least one). As in
    :func:`execute_ray`, this process alone writes the store: it claims each run just before it hands
    it to a worker, records its result or its failure, and, on Ctrl-C, records the runs in flight as
    interrupted. A worker that dies (killed, out of memory) breaks the pool: the runs in flight are
    recorded as failed with that reason (a sweep started again reruns them), and the sweep goes on in a
    fresh pool.
    """
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    environment = environment or environment_fingerprint()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cfg = asdict(config)
    cfg["progress"] = False  # no progress bars from workers
    root = checkpoint_root and str(checkpoint_root)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    queue = list(specs)
    pending = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        while queue or pending:
            yield from _fill(queue, pending, jobs, store, config, suite, environment,
                             lambda spec: pool.submit(_train_in_worker, asdict(spec), cfg, root, store.store_id,
                                                      threads))
            if not pending:
                continue
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                spec, run_id = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    reason = "BrokenProcessPool: the worker process running it died (killed or out of memory)"
                    store.fail_run(run_id, reason)
                    yield Outcome(spec, run_id, "failed", reason)
                    continue
                except Exception as exc:
                    reason = failure_reason(exc)
                    store.fail_run(run_id, reason)
                    yield Outcome(spec, run_id, "failed", reason)
                    continue
                _finish(store, run_id, result)
                yield _finished(spec, run_id, result)
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    except BaseException:
        for future, (spec, run_id) in pending.items():
            future.cancel()
            store.interrupt_run(run_id)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a message, when nothing listens at a Ray cluster address
    (``ray://host[:10001]`` or ``host:port``); ``auto`` and ``local`` are left to Ray."""
    import socket

    if address in ("auto", "local"):
        return
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "10001" if address.startswith("ray://") else "6379"
    host = host.strip("[]")
    if not port.isdigit() or not host:
        raise ValueError(f"--address {address!r} is not a Ray address; expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RuntimeError(f"cannot reach the Ray cluster at {address} ({reason}); check --address, or start a "
                           f"cluster there with `ray start --head`") from exc


def execute_ray(specs: list[RunSpec], config: TrainConfig, store: ResultStore, *, suite: str,
                address: str | None = None, num_cpus_per_run: float = 1, environment=None, checkpoint_root=None,
                connect_timeout: float = 5.0):
    """Train ``specs`` on a Ray cluster; yields an :class:`Outcome` per spec as runs end. The
    driver alone writes the store, and claims each run just before it sends it to the cluster,
    keeping at most as many runs in flight as the cluster has room for.

    ``address`` is the cluster's (``ray://host:10001`` or ``host:6379``); None starts a local
    Ray instance. An address where nothing answers within ``connect_timeout`` seconds is an
    error. The workers must have ssmlab and its dependencies installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the Ray executor needs Ray: pip install 'ssmlab[ray]'") from exc
    if not ray.is_initialized():
        if address:
            check_ray_address(address, connect_timeout)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    environment = environment or environment_fingerprint()
    remote = ray.remote(num_cpus=num_cpus_per_run)(_train_remote)
    cfg = {k: v for k, v in asdict(config).items()}
    cfg["progress"] = False  # no progress bars from workers
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus_per_run))
    queue = list(specs)
    pending = {}
    try:
        while queue or pending:
            yield from _fill(queue, pending, slots, store, config, suite, environment,
                             lambda spec: remote.remote(asdict(spec), cfg, checkpoint_root and str(checkpoint_root),
                                                        store.store_id))
            if not pending:
                continue
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec, run_id = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # a RayTaskError wrapping the worker's exception
                    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
                    error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                    store.fail_run(run_id, error)
                    yield Outcome(spec, run_id, "failed", error)
                    continue
                _finish(store, run_id, result)
                yield _finished(spec, run_id, result)
    except BaseException:
        for ref, (spec, run_id) in pending.items():
            ray.cancel(ref, force=True)
            store.interrupt_run(run_id)
        raise
