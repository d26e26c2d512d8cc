"""Embedded SQLite results store.

One file (default ``ssmlab-results/results.sqlite`` under the working
directory, or ``$SSMLAB_STORE``). A run is inserted as ``running`` before it
trains and updated to ``finished`` (or ``failed``) in one transaction at the
end, so a process killed half way leaves a readable file with the run marked
unfinished. The store knows nothing of training: it stores dicts.

Tables::

    runs(id, suite, model, task, seed, status, config, metrics, n_params,
         wall_time_s, peak_memory_mb, environment, started_at, finished_at)
    metrics(run_id, name, value)            -- final metrics, one row each
    curves(run_id, step, split, name, value)
    meta(key, value)                        -- the store's own settings, e.g. its random store_id
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    config TEXT NOT NULL,
    metrics TEXT,
    n_params INTEGER,
    wall_time_s REAL,
    peak_memory_mb REAL,
    environment TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS curves (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreError(RuntimeError):
    """The store file cannot be used (not a database, unwritable, ...)."""


def default_path() -> Path:
    return Path(os.environ.get("SSMLAB_STORE", "ssmlab-results/results.sqlite"))


def environment_fingerprint() -> dict[str, Any]:
    """git commit of the ssmlab source (if it is a checkout), torch version, device, Python, platform."""
    import torch

    import ssmlab

    commit = None
    source = Path(ssmlab.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {
        "git_commit": commit,
        "ssmlab_version": ssmlab.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


class ResultStore:
    """Runs, metrics and curves in one SQLite file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self._conn:
                self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable ssmlab results database ({exc}); "
                             f"choose another file with --store") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def store_id(self) -> str:
        """A random id of this store, made on first use and kept in its ``meta`` table: what a
        training checkpoint belongs to, so that a fresh store in the same folder never resumes
        another's."""
        import uuid

        with self._conn:
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            return self._conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0]

    def start_run(self, *, suite: str, model: str, task: str, seed: int, config: dict,
                  environment: dict | None = None) -> int:
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO runs (suite, model, task, seed, status, config, environment, started_at) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (suite, model, task, seed, json.dumps(config, sort_keys=True),
                 json.dumps(environment or environment_fingerprint(), sort_keys=True), time.time()),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, *, metrics: dict[str, float], n_params: int, wall_time_s: float,
                   peak_memory_mb: float | None, curves: Iterable[tuple[int, str, str, float]] = ()) -> None:
        """Write final metrics and curves and mark the run finished, in one transaction."""
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                                   [(run_id, k, float(v)) for k, v in metrics.items()])
            self._conn.executemany("INSERT INTO curves (run_id, step, split, name, value) VALUES (?, ?, ?, ?, ?)",
                                   [(run_id, s, sp, n, float(v)) for s, sp, n, v in curves])
            self._conn.execute(
                "UPDATE runs SET status='finished', metrics=?, n_params=?, wall_time_s=?, peak_memory_mb=?, "
                "finished_at=? WHERE id=?",
                (json.dumps(metrics, sort_keys=True), n_params, wall_time_s, peak_memory_mb, time.time(), run_id),
            )

    def fail_run(self, run_id: int, error: str) -> None:
        with self._conn:
            self._conn.execute("UPDATE runs SET status='failed', metrics=?, finished_at=? WHERE id=?",
                               (json.dumps({"error": error}), time.time(), run_id))

    def runs(self, *, suite: str | None = None, status: str | None = "finished") -> list[dict]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if suite is not None:
            query, args = query + " AND suite=?", args + [suite]
        if status is not None:
            query, args = query + " AND status=?", args + [status]
        cur = self._conn.execute(query + " ORDER BY id", args)
        cols = [c[0] for c in cur.description]
        rows = []
        for values in cur.fetchall():
            row = dict(zip(cols, values))
            for key in ("config", "metrics", "environment"):
                row[key] = json.loads(row[key]) if row[key] else None
            rows.append(row)
        return rows

    def find_finished(self, *, suite: str, config: dict) -> dict | None:
        """The latest finished run of ``suite`` with exactly this configuration, or None."""
        row = self._conn.execute("SELECT id FROM runs WHERE suite=? AND status='finished' AND config=? "
                                 "ORDER BY id DESC LIMIT 1", (suite, json.dumps(config, sort_keys=True))).fetchone()
        if row is None:
            return None
        return next(r for r in self.runs(suite=suite) if r["id"] == row[0])

    def curves(self, run_id: int) -> list[tuple[int, str, str, float]]:
        return self._conn.execute("SELECT step, split, name, value FROM curves WHERE run_id=? ORDER BY step",
                                  (run_id,)).fetchall()
