"""Time to plan a sweep over a large results store, and to build the report from it.

Builds, in a temporary folder, a store of ``--runs`` synthetic finished runs
(default 10,000: 50 models x 10 task variants x 20 seeds, each with a
training-loss curve of ``--curve-points`` points) whose configurations are
exactly those ``ssmlab run`` records for that experiment. Then times:

* planning the same sweep again (expanding the experiment and finding every
  run already finished, what ``ssmlab run`` does before it trains anything);
* ``ssmlab.report.build_report`` on the store opened read-only, without and
  with figures.

    python benchmarks/store.py [--runs 10000] [--curve-points 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ssmlab import experiment
from ssmlab.config import from_dict
from ssmlab.report import build_report
from ssmlab.store import ResultStore
from ssmlab.train.sweep import model_label, plan, run_config
from ssmlab.train.trainer import TrainConfig

TASKS = [{"name": "mqar", "options": {"seq_len": n, "num_kv_pairs": 4}} for n in (32, 64, 128, 256, 512)] + \
        [{"name": "selective-copying", "options": {"seq_len": n}} for n in (32, 64, 128, 256, 512)]


def synthetic_experiment(n_runs: int) -> experiment.Experiment:
    seeds = 20
    n_models = max(1, n_runs // (len(TASKS) * seeds))
    raw = {"name": "big", "defaults": {"d_model": 16, "n_layers": 1},
           "models": [{"mixer": "s4d", "name": f"s4d-{i:03d}", "options": {"mixer_options": {"d_state": 4 + i}}}
                      for i in range(n_models)],
           "tasks": TASKS, "seeds": list(range(seeds)), "trainer": {"steps": 200, "batch_size": 8}}
    return experiment.parse(raw, "benchmark")


def fill(store: ResultStore, specs, config: TrainConfig, suite: str, curve_points: int) -> None:
    environment = {"git_commit": "0" * 40, "torch_version": "synthetic", "device": "cpu"}
    with store.batch():
        for i, spec in enumerate(specs):
            run_id = store.start_run(suite=suite, model=model_label(spec), task=spec.task, seed=spec.seed,
                                     config=run_config(spec, config), environment=environment)
            accuracy = (i % 97) / 97
            curve = [(10 * k, "train", "loss", 2.0 / (1 + k) + accuracy) for k in range(curve_points)]
            store.finish_run(run_id, metrics={"test_accuracy": accuracy, "test_loss": 1 - accuracy},
                             n_params=1000 + i % 50, wall_time_s=1.0, peak_memory_mb=10.0, curves=curve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--curve-points", type=int, default=20)
    args = parser.parse_args()

    exp = synthetic_experiment(args.runs)
    config = from_dict(TrainConfig, {**exp.trainer, "progress": False})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.sqlite"
        started = time.perf_counter()
        specs = experiment.expand(exp)
        with ResultStore(path) as store:
            fill(store, specs, config, exp.name, args.curve_points)
        print(f"built a store of {len(specs)} runs x {args.curve_points} curve points in "
              f"{time.perf_counter() - started:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")

        started = time.perf_counter()
        specs = experiment.expand(exp)
        expanded = time.perf_counter() - started
        with ResultStore(path) as store:
            started = time.perf_counter()
            todo, done = plan(specs, config, store, suite=exp.name)
            planned = time.perf_counter() - started
        assert not todo and len(done) == len(specs), (len(todo), len(done))
        print(f"plan a sweep of {len(specs)} runs, all finished: {expanded + planned:.3f} s "
              f"(expand {expanded:.3f} s, find finished {planned:.3f} s)")

        for figures in (False, True):
            with ResultStore(path, read_only=True) as store:
                started = time.perf_counter()
                paths = build_report(store, Path(tmp) / f"report-{figures}", figures=figures)
                took = time.perf_counter() - started
            print(f"report {'with' if figures else 'without'} figures: {took:.2f} s "
                  f"({len(paths.get('figures', []))} figures)")


if __name__ == "__main__":
    main()
