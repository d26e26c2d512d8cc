"""A sweep goes on past a failing run, and two sweeps on one store share the work."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from ssmlab.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_TASK = "{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 32, n_test: 8}}"


def test_a_failing_run_in_the_middle_leaves_the_others_finished(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    # n_heads=3 does not divide d_model=8: the attention run fails when its model is built.
    path.write_text(f"name: mid\ndefaults: {{d_model: 8, n_layers: 1}}\nmodels: [s4d, {{mixer: attention, options: "
                    f"{{mixer_options: {{n_heads: 3}}}}}}, lru]\ntasks: [{TINY_TASK}]\n"
                    f"trainer: {{steps: 2, batch_size: 4}}\n")
    db = tmp_path / "r.sqlite"
    args = ["run", str(path), "--store", str(db), "--no-progress", "--report-dir", str(tmp_path / "rep")]
    assert main(args) == 1  # the exit status counts the failed runs
    captured = capsys.readouterr()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, status, metrics FROM runs ORDER BY id").fetchall()
    assert [r[:2] for r in rows] == [("s4d", "finished"), ("attention", "failed"), ("lru", "finished")]
    assert "divisible by n_heads=3" in json.loads(rows[1][2])["error"]
    err = captured.err.strip().splitlines()
    assert err[0] == "1 of 3 runs failed:" and "attention on mqar" in err[1] and "n_heads=3" in err[1]
    assert "Traceback" not in captured.err
    # Again: the finished runs are skipped, the failed one is tried again (and fails again).
    assert main(args) == 1
    assert "finished 0 runs" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")] == \
            ["finished", "failed", "finished", "failed"]


def test_two_identical_sweeps_at_once_run_each_configuration_once(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: twice\ndefaults: {{d_model: 8, n_layers: 1}}\nmodels: [s4d, lru]\n"
                    f"tasks: [{TINY_TASK}]\nseeds: [0, 1]\ntrainer: {{steps: 40, batch_size: 4}}\n")
    db = tmp_path / "r.sqlite"
    command = [sys.executable, "-m", "ssmlab.cli", "run", str(path), "--store", str(db), "--no-progress",
               "--report-dir", str(tmp_path / "rep")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, seed, status FROM runs ORDER BY id").fetchall()
    assert sorted(rows) == sorted((m, s, "finished") for m in ("s4d", "lru") for s in (0, 1))


def test_runs_at_a_time_in_worker_processes_record_the_same_runs(tmp_path, capsys):
    """``jobs: 2`` trains in two worker processes: every run recorded by this process, a failing one as
    failed with its reason, and the same metrics as one run after another (``--jobs 1``)."""
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: par\njobs: 2\ndefaults: {{d_model: 8, n_layers: 1}}\nmodels: [s4d, {{mixer: attention, "
                    f"options: {{mixer_options: {{n_heads: 3}}}}}}, lru]\ntasks: [{TINY_TASK}]\n"
                    f"trainer: {{steps: 3, batch_size: 4}}\n")
    stores = {}
    for jobs in ("2", "1"):
        db = tmp_path / f"r{jobs}.sqlite"
        args = ["run", str(path), "--store", str(db), "--no-progress", "--report-dir", str(tmp_path / "rep")]
        assert main(args + (["--jobs", "1"] if jobs == "1" else [])) == 1
        out = capsys.readouterr().out
        assert ("running 2 runs at a time" in out) == (jobs == "2")
        with sqlite3.connect(db) as conn:
            stores[jobs] = {m: (s, json.loads(x)) for m, s, x in conn.execute("SELECT model, status, metrics FROM runs")}
    for store in stores.values():
        assert {m: s for m, (s, _) in store.items()} == {"s4d": "finished", "attention": "failed", "lru": "finished"}
        assert "divisible by n_heads=3" in store["attention"][1]["error"]
    for model in ("s4d", "lru"):
        parallel, serial = stores["2"][model][1], stores["1"][model][1]
        assert parallel.keys() == serial.keys()
        for key in ("test_loss", "train_loss"):
            assert abs(parallel[key] - serial[key]) <= 1e-4 * abs(serial[key]), (model, key, parallel, serial)
