"""A process killed while training leaves the store readable, with its run marked unfinished."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from ssmlab.cli import main
from ssmlab.store import ResultStore


def test_sigkill_during_a_run_leaves_store_readable_and_run_unfinished(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:  # a finished run from before, which must survive
        run = store.start_run(suite="old", model="s4d", task="mqar", seed=0, config={}, environment={})
        store.finish_run(run, metrics={"test_accuracy": 0.5}, n_params=1, wall_time_s=1.0, peak_memory_mb=None)
    proc = subprocess.Popen([sys.executable, "-m", "ssmlab.cli", "train", "attention", "mqar", "--steps", "100000",
                             "--d-model", "8", "--n-layers", "1", "--store", str(db), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with sqlite3.connect(db) as conn:
                if conn.execute("SELECT count(*) FROM runs WHERE status='running'").fetchone()[0]:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the training process never recorded its run")
        time.sleep(1.0)  # well into training
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT suite, model, status FROM runs ORDER BY id").fetchall()
    assert rows == [("old", "s4d", "finished"), ("train", "attention", "running")]
    with ResultStore(db) as store:
        assert [r["model"] for r in store.runs()] == ["s4d"]  # finished runs only, by default
        # The killed process is gone: its row, still 'running' in the file, reads as interrupted.
        assert [r["status"] for r in store.runs(status=None)] == ["finished", "interrupted"]
        assert store.runs(status="running") == []


def test_bad_input_loses_nothing_in_the_store(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        run = store.start_run(suite="quick", model="s4d", task="mqar", seed=0, config={}, environment={})
        store.finish_run(run, metrics={"test_accuracy": 0.5}, n_params=1, wall_time_s=1.0, peak_memory_mb=None)
    before = db.read_bytes()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [mamba\n")
    for argv in (["run", "--mixers", "mamab"], ["run", "--tasks", "mqra"], ["run", str(bad_yaml)],
                 ["run", "--set", "trainer.steps=many"], ["train", "mamab", "mqar"]):
        assert main([*argv, "--store", str(db)]) != 0, argv
    capsys.readouterr()
    with ResultStore(db) as store:
        assert [(r["model"], r["status"]) for r in store.runs(status=None)] == [("s4d", "finished")]
    assert len(db.read_bytes()) >= len(before)
