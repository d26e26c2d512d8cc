"""The Ray executor on a local Ray instance: runs go to workers, the driver alone writes the store."""

import json
import sqlite3

import pytest

from ssmlab.cli import main

ray = pytest.importorskip("ray", reason="the Ray executor needs: pip install 'ssmlab[ray]'")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_sweep_on_local_ray_matches_local_execution(tmp_path, capsys, local_ray):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [attention, s4d]\n"
                    "tasks: [{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 32, "
                    "n_test: 8}}]\nseeds: [0, 1]\ntrainer: {steps: 3, batch_size: 4}\n")
    remote_db, local_db = tmp_path / "ray.sqlite", tmp_path / "local.sqlite"
    common = [str(path), "--no-progress", "--report-dir", str(tmp_path / "rep")]
    assert main(["run", *common, "--store", str(remote_db), "--executor", "ray"]) == 0
    assert "sending 4 runs to Ray" in capsys.readouterr().out
    assert main(["run", *common, "--store", str(local_db)]) == 0

    def results(db):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute("SELECT model, task, seed, status, metrics FROM runs").fetchall())

    # Same seeds and data: the workers' results equal the local ones, up to the order of float sums
    # (a worker may use another number of threads).
    remote, local = results(remote_db), results(local_db)
    assert [r[:4] for r in remote] == [r[:4] for r in local]
    assert [r[3] for r in remote] == ["finished"] * 4
    for a, b in zip(remote, local):
        ma, mb = json.loads(a[4]), json.loads(b[4])
        assert ma.keys() == mb.keys() and all(ma[k] == pytest.approx(mb[k], rel=1e-5) for k in ma)


def test_failed_remote_run_is_recorded_and_the_rest_finish(tmp_path, capsys, local_ray):
    path = tmp_path / "bad.yaml"
    # n_heads=3 does not divide d_model=8: attention fails to build on the worker; s4d trains.
    path.write_text("name: bad\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [{mixer: attention, options: "
                    "{mixer_options: {n_heads: 3}}}, s4d]\ntasks: [{name: mqar, options: {vocab_size: 16, "
                    "seq_len: 16, num_kv_pairs: 2, n_train: 32, n_test: 8}}]\ntrainer: {steps: 2, batch_size: 4}\n")
    db = tmp_path / "r.sqlite"
    assert main(["run", str(path), "--store", str(db), "--no-progress", "--executor", "ray",
                 "--report-dir", str(tmp_path / "rep")]) == 1
    out = capsys.readouterr().out
    assert "failed: " in out and "must be divisible by n_heads=3" in out
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT model, status FROM runs").fetchall())
    assert rows == {"attention": "failed", "s4d": "finished"}


def test_unreachable_address_is_an_error_within_seconds(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [s4d]\ntasks: [{name: mqar, options: "
                    "{vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 32, n_test: 8}}]\n"
                    "trainer: {steps: 2, batch_size: 4}\n")
    db = tmp_path / "r.sqlite"
    # Nothing listens on port 1. Before, ray.init waited there for minutes; the bound here is generous
    # for a loaded machine, the check itself gives up after 5 s.
    proc = subprocess.run([sys.executable, "-m", "ssmlab.cli", "run", str(path), "--store", str(db),
                           "--executor", "ray", "--address", "127.0.0.1:1", "--no-progress"], capture_output=True,
                          text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 1
    assert proc.stderr.startswith("ssmlab: error: cannot reach the Ray cluster at 127.0.0.1:1")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not db.exists()


def test_runs_are_claimed_when_they_start_not_up_front(tmp_path):
    from ssmlab.config import from_dict
    from ssmlab.store import ResultStore
    from ssmlab.train.sweep import RunSpec, execute_ray
    from ssmlab.train.trainer import TrainConfig

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        options = {"vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "n_train": 32, "n_test": 8}
        specs = [RunSpec("s4d", "mqar", seed, options, d_model=8, n_layers=1) for seed in range(3)]
        config = from_dict(TrainConfig, {"steps": 2, "batch_size": 4, "progress": False})
        with ResultStore(tmp_path / "r.sqlite") as store:
            outcomes = execute_ray(specs, config, store, suite="s")
            first = next(outcomes)
            # One slot on this cluster: when the first run ends, only it has been claimed.
            assert first.status == "finished"
            assert [(r["seed"], r["status"]) for r in store.runs(status=None)] == [(first.spec.seed, "finished")]
            rest = list(outcomes)
        assert sorted(o.spec.seed for o in [first, *rest]) == [0, 1, 2]
        assert all(o.status == "finished" for o in rest)
    finally:
        ray.shutdown()
