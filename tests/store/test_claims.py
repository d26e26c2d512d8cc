"""Claims, heartbeats, interrupted runs, migration of an old store, read-only opening."""

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssmlab.store import ResultStore, StoreError, config_hash
from ssmlab.store import sqlite as store_module

REPO = Path(__file__).resolve().parents[2]
CLAIM = dict(suite="s", model="m", task="t", seed=0, config={"a": 1}, environment={})


def test_a_claimed_or_finished_configuration_is_not_claimed_again(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        first = store.claim_run(**CLAIM)
        assert first.run_id is not None
        assert store.claim_run(**CLAIM) == (None, "running", first.run_id)
        other = store.claim_run(**{**CLAIM, "config": {"a": 2}})
        assert other.run_id not in (None, first.run_id)
        store.finish_run(first.run_id, metrics={"test_accuracy": 1.0}, n_params=1, wall_time_s=1.0,
                         peak_memory_mb=None)
        assert store.claim_run(**CLAIM) == (None, "finished", first.run_id)
        assert store.finished_configs("s") == {config_hash({"a": 1}): first.run_id}


def test_the_run_of_a_killed_process_reads_as_interrupted_and_is_taken_over(tmp_path):
    db = tmp_path / "r.sqlite"
    script = ("import sys, time\nfrom ssmlab.store import ResultStore\n"
              "s = ResultStore(sys.argv[1])\n"
              "print(s.claim_run(suite='s', model='m', task='t', seed=0, config={'a': 1}, environment={}).run_id,"
              " flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        run_id = int(proc.stdout.readline())
        with ResultStore(db) as store:
            assert [r["status"] for r in store.runs(status=None)] == ["running"]
            assert store.claim_run(**CLAIM) == (None, "running", run_id)  # alive elsewhere: not taken
            proc.kill()
            proc.wait(timeout=30)
            (row,) = store.runs(status=None)
            assert row["status"] == "interrupted" and row["pid"] == proc.pid and row["host"]
            taken = store.claim_run(**CLAIM)
            assert taken.run_id is not None and taken.run_id != run_id
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stale_heartbeat_reads_as_interrupted(tmp_path, monkeypatch):
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_id = store.claim_run(**CLAIM).run_id
        # A run of another host, whose heartbeat stopped long ago.
        store._conn.execute("UPDATE runs SET host='elsewhere', pid=1, heartbeat=? WHERE id=?",
                            (time.time() - store_module.STALE_S - 1, run_id))
        assert store.runs(status="interrupted")[0]["id"] == run_id
        store._conn.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run_id))
        assert store.runs(status="running")[0]["id"] == run_id


def test_heartbeat_is_refreshed_while_the_run_lasts(tmp_path):
    with ResultStore(tmp_path / "r.sqlite", heartbeat_s=0.05) as store:
        run_id = store.start_run(**CLAIM)
        first = store.run(run_id)["heartbeat"]
        deadline = time.time() + 30
        while store.run(run_id)["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert store.run(run_id)["heartbeat"] > first


OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, suite TEXT NOT NULL, model TEXT NOT NULL,
    task TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')), config TEXT NOT NULL, metrics TEXT,
    n_params INTEGER, wall_time_s REAL, peak_memory_mb REAL, environment TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL);
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id), name TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, name));
CREATE TABLE curves (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL, split TEXT NOT NULL,
    name TEXT NOT NULL, value REAL);
INSERT INTO runs VALUES (7, 's', 'm', 't', 0, 'finished', '{"a": 1}', '{"test_accuracy": 0.5}', 3, 1.0, NULL,
    '{}', 1.0, 2.0);
INSERT INTO runs VALUES (8, 's', 'm', 't', 1, 'running', '{"a": 2}', NULL, NULL, NULL, NULL, '{}', 1.0, NULL);
INSERT INTO curves VALUES (7, 0, 'train', 'loss', 2.0);
"""


def _old_store(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    return path


def test_an_old_store_is_migrated_in_place(tmp_path):
    db = _old_store(tmp_path / "old.sqlite")
    with ResultStore(db) as store:
        assert [(r["id"], r["status"]) for r in store.runs(status=None)] == [(7, "finished"), (8, "interrupted")]
        assert store.find_finished(suite="s", config={"a": 1})["id"] == 7
        assert store.claim_run(**CLAIM) == (None, "finished", 7)
        assert store.claim_run(**{**CLAIM, "config": {"a": 2}}).run_id == 9  # the killed one is taken over
        assert store.curves(7) == [(0, "train", "loss", 2.0)]
        assert store.store_id
    with sqlite3.connect(db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"runs_by_suite", "runs_by_config", "curves_by_run"} <= indexes
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT config_hash FROM runs WHERE id=7").fetchone()[0] == config_hash({"a": 1})
        conn.execute("UPDATE runs SET status='interrupted' WHERE id=8")  # the new status is allowed


def test_read_only_opening_writes_nothing_even_to_an_old_store(tmp_path):
    db = _old_store(tmp_path / "old.sqlite")
    before = db.read_bytes()
    with ResultStore(db, read_only=True) as store:
        assert [r["id"] for r in store.runs()] == [7]
        assert store.curves_of([7, 8]) == {7: [(0, "train", "loss", 2.0)], 8: []}
        with pytest.raises(StoreError, match="read-only"):
            store.start_run(**CLAIM)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]  # no -wal or -shm left behind


def test_report_in_a_read_only_folder(tmp_path):
    from ssmlab.cli import main

    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.sqlite"
    with ResultStore(db) as store:
        run = store.start_run(**CLAIM)
        store.finish_run(run, metrics={"test_accuracy": 0.5}, n_params=1, wall_time_s=1.0, peak_memory_mb=None,
                         curves=[(0, "train", "loss", 1.0)])
    if os.geteuid() == 0:
        # Mode bits do not stop root: make SQLite unable to create its -wal and -shm files instead,
        # which is what a read-only folder does to it.
        for suffix in ("-wal", "-shm"):
            (folder / f"r.sqlite{suffix}").mkdir()
    os.chmod(db, 0o444)
    os.chmod(folder, 0o555)
    try:
        before = sorted(p.name for p in folder.iterdir())
        proc = subprocess.run([sys.executable, "-m", "ssmlab.cli", "report", "--store", str(db), "--out",
                               str(tmp_path / "out"), "--no-figures"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "report.html").is_file()
        assert sorted(p.name for p in folder.iterdir()) == before
        # Without --out the report would go into the read-only folder: one line that says so.
        if os.geteuid() != 0:
            assert main(["report", "--store", str(db)]) == 1
    finally:
        os.chmod(folder, 0o755)
