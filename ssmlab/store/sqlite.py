"""Embedded SQLite results store.

One file (default ``ssmlab-results/results.sqlite`` under the working
directory, or ``$SSMLAB_STORE``). A sweep *claims* a run before training it:
in one ``BEGIN IMMEDIATE`` transaction it checks that no finished run and no
live claim of the same configuration exists in the suite, and inserts the run
as ``running`` with its process id, host and a heartbeat. A background thread
of the claiming process refreshes the heartbeat every ``HEARTBEAT_S`` seconds.
A ``running`` row whose process is gone (same host) or whose heartbeat is older
than ``STALE_S`` seconds is read back as ``interrupted``, and the next sweep
takes the configuration over. The end of a run (``finished``, ``failed`` with
its reason, or ``interrupted`` on Ctrl-C) is written in one transaction, so a
process killed half way leaves a readable file with the run marked unfinished.
The store knows nothing of training: it stores dicts.

Tables::

    runs(id, suite, model, task, seed, status, config, metrics, n_params,
         wall_time_s, peak_memory_mb, environment, started_at, finished_at,
         config_hash, pid, host, heartbeat)
    metrics(run_id, name, value)            -- final metrics, one row each
    curves(run_id, step, split, name, value)
    meta(key, value)                        -- store_id: this store's identity

A store written by an older ssmlab (no ``config_hash``, no heartbeat) is
migrated in place the first time it is opened for writing; opened read-only
(``read_only=True``, what ``ssmlab report`` does) it is read as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, NamedTuple

SCHEMA_VERSION = 2
HEARTBEAT_S = 10.0  # how often a claiming process refreshes the heartbeat of its running runs
STALE_S = 120.0  # a running run whose heartbeat is older than this is read as interrupted
HOST = socket.gethostname()

_RUNS = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    config TEXT NOT NULL,
    metrics TEXT,
    n_params INTEGER,
    wall_time_s REAL,
    peak_memory_mb REAL,
    environment TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    config_hash TEXT,
    pid INTEGER,
    host TEXT,
    heartbeat REAL
)"""
_OLD_COLUMNS = ("id, suite, model, task, seed, status, config, metrics, n_params, wall_time_s, peak_memory_mb, "
                "environment, started_at, finished_at")
_TABLES = [
    """CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
)""",
    """CREATE TABLE IF NOT EXISTS curves (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL
)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
]
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS runs_by_suite ON runs (suite, status)",
    "CREATE INDEX IF NOT EXISTS runs_by_config ON runs (suite, config_hash, status)",
    "CREATE INDEX IF NOT EXISTS curves_by_run ON curves (run_id, step)",
]
_JSON_COLUMNS = ("config", "metrics", "environment")

# Runs this process has claimed and not yet ended, over all its stores: a row with this
# process's pid and host is alive only if it is here (a row left by an earlier sweep of the
# same process, e.g. in a test, is not).
_ACTIVE: set[tuple[str, int]] = set()


class StoreError(RuntimeError):
    """The store file cannot be used (not a database, unwritable, damaged, ...)."""


class Claim(NamedTuple):
    """What :meth:`ResultStore.claim_run` found: ``run_id`` is the new run, or None when the
    configuration is ``"finished"`` (as run ``other``) or ``"running"`` in a live process."""

    run_id: int | None
    reason: str | None = None
    other: int | None = None


def default_path() -> Path:
    return Path(os.environ.get("SSMLAB_STORE", "ssmlab-results/results.sqlite"))


def config_hash(config: dict | str) -> str:
    """The key of a run configuration: sha256 of its canonical JSON (sorted keys)."""
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _explain(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"the results store {path} is read-only ({text}); pass a writable file with --store"
    if "unable to open" in text:
        return f"cannot open the results store {path} ({text}); pass a writable file with --store"
    if "locked" in text or "busy" in text:
        return f"the results store {path} stayed locked by another process ({text}); try again"
    if "not a database" in text:
        return f"{path} is not a usable ssmlab results database ({text}); pass the right file with --store"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError) \
            or "malformed" in text:
        return (f"the results store {path} is damaged ({text}); restore it from a copy, or pass another "
                f"file with --store")
    return f"results store {path}: {text}"


def _guarded(method):
    """Turn an sqlite3 error inside a store method into a StoreError that says what to do."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from exc

    return wrapper


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of this process's running runs every ``interval`` seconds, on its own connection."""

    def __init__(self, path: Path, interval: float):
        super().__init__(name="ssmlab-store-heartbeat", daemon=True)
        self.path, self.interval = path, interval
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        try:
            while not self.stop.wait(self.interval):
                with self.lock:
                    ids = sorted(self.ids)
                if not ids:
                    continue
                try:
                    conn.execute(f"UPDATE runs SET heartbeat=? WHERE status='running' AND id IN "
                                 f"({','.join('?' * len(ids))})", [time.time(), *ids])
                except sqlite3.Error:
                    pass  # busy or gone: the next beat tries again
        finally:
            conn.close()


class ResultStore:
    """Runs, metrics and curves in one SQLite file.

    ``read_only=True`` opens the file with SQLite's ``mode=ro`` (and, in a folder where SQLite
    cannot create its shared-memory file, as immutable): nothing is written, not even a
    migration, so a report can be built from a store in a read-only folder.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False,
                 heartbeat_s: float | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.read_only = read_only
        self._depth = 0
        self._heartbeat: _Heartbeat | None = None
        self._heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self._conn = None
        self._cache = None
        self._key = str(self.path.resolve())
        if read_only:
            self._conn = self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise StoreError(f"cannot put the results store at {self.path}: {blocking} is a file, not a folder; "
                                 f"pass another path with --store") from exc
            raise StoreError(f"cannot create the folder of the results store {self.path} "
                             f"({exc.strerror or exc}); pass another file with --store") from exc
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"the results store {self.path} is not a file; pass a file path with --store")
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "not a database" not in str(exc):
                raise StoreError(_explain(self.path, exc)) from exc
            raise StoreError(f"{self.path} is not a usable ssmlab results database ({exc}); "
                             f"choose another file with --store") from exc

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"no results store at {self.path}; run `ssmlab run` first or pass --store")
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        last = None
        for mode in ("mode=ro", "mode=ro&immutable=1"):
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=30)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone()
                return conn
            except sqlite3.Error as exc:
                conn.close()
                last = exc
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                    break
                if "no such table" in str(exc):
                    raise StoreError(f"{self.path} is not a usable ssmlab results database (it has no runs table); "
                                     f"pass the right file with --store") from exc
        raise StoreError(_explain(self.path, last)) from last

    def _migrate(self) -> None:
        """Create the tables, or bring a store of an older version up to date, in one transaction."""
        with self._write():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            exists = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone()
            if exists:
                # The status check cannot be altered in place: rebuild the table, keeping every id.
                self._conn.execute(_RUNS.format(name="runs_migrated"))
                self._conn.execute(f"INSERT INTO runs_migrated ({_OLD_COLUMNS}) SELECT {_OLD_COLUMNS} FROM runs")
                self._conn.execute("DROP TABLE runs")
                self._conn.execute("ALTER TABLE runs_migrated RENAME TO runs")
                self._conn.create_function("ssmlab_config_hash", 1, config_hash, deterministic=True)
                self._conn.execute("UPDATE runs SET config_hash = ssmlab_config_hash(config)")
            else:
                self._conn.execute(_RUNS.format(name="runs"))
            for statement in _TABLES + _INDEXES:
                self._conn.execute(statement)
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self):
        """One ``BEGIN IMMEDIATE`` transaction (nested calls join the outer one)."""
        if self.read_only:
            raise StoreError(f"the results store {self.path} was opened read-only")
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._depth = 0
        self._conn.execute("COMMIT")

    @contextmanager
    def batch(self):
        """Group many writes (e.g. importing runs) into one transaction."""
        try:
            with self._write():
                yield self
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from exc

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop.set()
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    @_guarded
    def store_id(self) -> str | None:
        """A random identity given to this store when it was created (None for an old store read read-only)."""
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def _track(self, run_id: int) -> None:
        _ACTIVE.add((self._key, run_id))
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self._heartbeat_s)
            self._heartbeat.start()
        with self._heartbeat.lock:
            self._heartbeat.ids.add(run_id)

    def _untrack(self, run_id: int) -> None:
        _ACTIVE.discard((self._key, run_id))
        if self._heartbeat is not None:
            with self._heartbeat.lock:
                self._heartbeat.ids.discard(run_id)

    def _insert(self, suite, model, task, seed, config, environment) -> int:
        text = json.dumps(config, sort_keys=True)
        now = time.time()
        cur = self._conn.execute(
            "INSERT INTO runs (suite, model, task, seed, status, config, environment, started_at, config_hash, "
            "pid, host, heartbeat) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            (suite, model, task, seed, text, json.dumps(environment or environment_fingerprint(), sort_keys=True),
             now, config_hash(text), os.getpid(), HOST, now),
        )
        return int(cur.lastrowid)

    @_guarded
    def start_run(self, *, suite: str, model: str, task: str, seed: int, config: dict,
                  environment: dict | None = None) -> int:
        """Insert a run as ``running`` whatever else the store holds (see :meth:`claim_run` for sweeps)."""
        with self._write():
            run_id = self._insert(suite, model, task, seed, config, environment)
        self._track(run_id)
        return run_id

    @_guarded
    def claim_run(self, *, suite: str, model: str, task: str, seed: int, config: dict,
                  environment: dict | None = None) -> Claim:
        """Atomically claim the run of ``config`` in ``suite``: a new ``running`` row, unless the
        configuration is already finished or running in a live process. A configuration whose
        earlier run was interrupted (its process gone or its heartbeat stale) is taken over."""
        key = config_hash(config)
        with self._write():
            rows = self._conn.execute(
                "SELECT id, status, pid, host, heartbeat FROM runs WHERE suite=? AND config_hash=? "
                "AND status IN ('finished', 'running') ORDER BY id DESC", (suite, key)).fetchall()
            for run_id, status, pid, host, heartbeat in rows:
                if status == "finished":
                    return Claim(None, "finished", run_id)
                if self._alive(run_id, pid, host, heartbeat):
                    return Claim(None, "running", run_id)
            run_id = self._insert(suite, model, task, seed, config, environment)
        self._track(run_id)
        return Claim(run_id)

    def _alive(self, run_id: int, pid: int | None, host: str | None, heartbeat: float | None) -> bool:
        if pid is None or heartbeat is None or time.time() - heartbeat > STALE_S:
            return False
        if host != HOST:
            return True
        if pid == os.getpid():
            return (self._key, run_id) in _ACTIVE
        return _pid_alive(pid)

    @_guarded
    def finish_run(self, run_id: int, *, metrics: dict[str, float], n_params: int, wall_time_s: float,
                   peak_memory_mb: float | None, curves: Iterable[tuple[int, str, str, float]] = ()) -> None:
        """Write final metrics and curves and mark the run finished, in one transaction."""
        with self._write():
            self._conn.executemany("INSERT OR REPLACE INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                                   [(run_id, k, float(v)) for k, v in metrics.items()])
            self._conn.executemany("INSERT INTO curves (run_id, step, split, name, value) VALUES (?, ?, ?, ?, ?)",
                                   [(run_id, s, sp, n, float(v)) for s, sp, n, v in curves])
            self._conn.execute(
                "UPDATE runs SET status='finished', metrics=?, n_params=?, wall_time_s=?, peak_memory_mb=?, "
                "finished_at=? WHERE id=?",
                (json.dumps(metrics, sort_keys=True), n_params, wall_time_s, peak_memory_mb, time.time(), run_id),
            )
        self._untrack(run_id)

    @_guarded
    def fail_run(self, run_id: int, error: str) -> None:
        """Mark the run failed with its reason (kept as ``metrics = {"error": reason}``)."""
        self._end(run_id, "failed", error)

    @_guarded
    def interrupt_run(self, run_id: int, reason: str = "interrupted") -> None:
        """Mark the run interrupted (Ctrl-C); the next sweep runs its configuration again."""
        self._end(run_id, "interrupted", reason)

    def _end(self, run_id: int, status: str, reason: str) -> None:
        with self._write():
            self._conn.execute("UPDATE runs SET status=?, metrics=?, finished_at=? WHERE id=?",
                               (status, json.dumps({"error": reason}), time.time(), run_id))
        self._untrack(run_id)

    def _status(self, row: dict) -> str:
        if row["status"] != "running":
            return row["status"]
        alive = self._alive(row["id"], row.get("pid"), row.get("host"), row.get("heartbeat"))
        return "running" if alive else "interrupted"

    @_guarded
    def runs(self, *, suite: str | None = None, status: str | None = "finished", model: str | None = None,
             task: str | None = None) -> list[dict]:
        """Runs in id order, their JSON columns parsed. ``status`` None gives every run; a ``running``
        row whose process is gone or whose heartbeat is stale has status ``interrupted``.

        The parsed rows are kept until the file changes (SQLite's ``data_version`` and this
        connection's changes), so the many reads of one report parse the store once; each call
        returns fresh row dicts (the parsed JSON values inside are shared: do not modify them)."""
        out = []
        for row in self._all_runs():
            if (suite is not None and row["suite"] != suite or model is not None and row["model"] != model
                    or task is not None and row["task"] != task):
                continue
            row = dict(row)
            if row["status"] == "running":
                row["status"] = self._status(row)
            if status is None or row["status"] == status:
                out.append(row)
        return out

    def _all_runs(self) -> list[dict]:
        version = (self._conn.execute("PRAGMA data_version").fetchone()[0], self._conn.total_changes)
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        cur = self._conn.execute("SELECT * FROM runs ORDER BY id")
        cols = [c[0] for c in cur.description]
        rows = []
        for values in cur.fetchall():
            row = dict(zip(cols, values))
            for key in _JSON_COLUMNS:
                row[key] = json.loads(row[key]) if row[key] else None
            rows.append(row)
        self._cache = (version, rows)
        return rows

    @_guarded
    def run(self, run_id: int) -> dict | None:
        """One run by id, as in :meth:`runs`, or None."""
        cur = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        values = cur.fetchone()
        if values is None:
            return None
        row = dict(zip([c[0] for c in cur.description], values))
        for key in _JSON_COLUMNS:
            row[key] = json.loads(row[key]) if row[key] else None
        row["status"] = self._status(row)
        return row

    @_guarded
    def finished_configs(self, suite: str) -> dict[str, int]:
        """``{config_hash: id of its latest finished run}`` over the suite: one query for a whole sweep."""
        return dict(self._conn.execute("SELECT config_hash, max(id) FROM runs WHERE suite=? AND status='finished' "
                                       "GROUP BY config_hash", (suite,)).fetchall())

    @_guarded
    def find_finished(self, *, suite: str, config: dict) -> dict | None:
        """The latest finished run of ``suite`` with exactly this configuration, or None."""
        row = self._conn.execute("SELECT id FROM runs WHERE suite=? AND status='finished' AND config_hash=? "
                                 "ORDER BY id DESC LIMIT 1", (suite, config_hash(config))).fetchone()
        return None if row is None else self.run(row[0])

    @_guarded
    def curves(self, run_id: int) -> list[tuple[int, str, str, float]]:
        return self._conn.execute("SELECT step, split, name, value FROM curves WHERE run_id=? ORDER BY step",
                                  (run_id,)).fetchall()

    @_guarded
    def curves_of(self, run_ids: Iterable[int], *, split: str | None = None,
                  name: str | None = None) -> dict[int, list[tuple[int, str, str, float]]]:
        """The curves of many runs in one query: ``{run_id: [(step, split, name, value), ...]}``."""
        ids = sorted(set(run_ids))
        out: dict[int, list] = {i: [] for i in ids}
        for start in range(0, len(ids), 900):  # SQLite's limit on bound parameters
            chunk = ids[start:start + 900]
            query = f"SELECT run_id, step, split, name, value FROM curves WHERE run_id IN ({','.join('?' * len(chunk))})"
            args: list = list(chunk)
            for column, value in (("split", split), ("name", name)):
                if value is not None:
                    query, args = query + f" AND {column}=?", args + [value]
            for run_id, *rest in self._conn.execute(query + " ORDER BY run_id, step", args):
                out[run_id].append(tuple(rest))
        return out
