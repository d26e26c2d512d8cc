"""Fault injection: ``ssmlab run`` killed at random moments (SIGKILL or Ctrl-C), then run again, many times.

A small sweep (2 models x 1 task x 2 seeds, a few steps each, a checkpoint every step) is
run once without faults for reference. Then, on a second store, the same command is started
and killed at a moment drawn from a seeded generator, over and over, and finally run to the
end. After every kill the store passes SQLite's integrity check and no configuration is
finished twice; at the end every configuration is finished exactly once, with the metrics of
the uninterrupted sweep. Bounded in time: kills stop after ``KILL_BUDGET_S`` seconds.
"""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli_errors import terminal_signals

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILL_BUDGET_S = 50
MAX_KILLS = 10
EXPERIMENT = """name: faults
defaults: {d_model: 8, n_layers: 1}
models: [s4d, lru]
tasks: [{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 64, n_test: 16}}]
seeds: [0, 1]
trainer: {steps: 12, batch_size: 4, checkpoint_every: 1}
"""


def _command(experiment: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "ssmlab.cli", "run", str(experiment), "--store", str(store), "--no-progress",
            "--report-dir", str(store.parent / "report")]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _finished(store: Path) -> dict:
    """``{(model, task, seed): [metrics of each finished run]}``."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT model, task, seed, metrics FROM runs WHERE status='finished'").fetchall()
    out = {}
    for model, task, seed, metrics in rows:
        out.setdefault((model, task, seed), []).append(json.loads(metrics))
    return out


def _count(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def _integrity(store: Path) -> str:
    with sqlite3.connect(store) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_sweep_survives_random_kills(tmp_path):
    experiment = tmp_path / "faults.yaml"
    experiment.write_text(EXPERIMENT)
    reference_store = tmp_path / "reference" / "results.sqlite"
    started = time.monotonic()
    proc = subprocess.Popen(_command(experiment, reference_store), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    startup = None  # seconds until the first run is claimed (imports, planning)
    while proc.poll() is None:
        if startup is None and reference_store.exists():
            try:
                if _count(reference_store):
                    startup = time.monotonic() - started
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    duration = time.monotonic() - started
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    startup = duration / 2 if startup is None else startup
    reference = _finished(reference_store)
    assert len(reference) == 4 and all(len(v) == 1 for v in reference.values())

    store = tmp_path / "faulty" / "results.sqlite"
    rng = random.Random(0)
    kills = {"SIGKILL": 0, "SIGINT": 0}
    deadline = time.monotonic() + KILL_BUDGET_S
    while time.monotonic() < deadline and sum(kills.values()) < MAX_KILLS:
        # A moment within the work still to do: start-up, then the runs not yet finished.
        remaining = 1.0
        if store.exists():
            try:
                remaining = (4 - len(_finished(store))) / 4
            except sqlite3.OperationalError:  # created, tables not yet
                pass
        proc = subprocess.Popen(_command(experiment, store), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=terminal_signals)
        try:
            proc.wait(timeout=startup + rng.uniform(0.05, 0.95) * (duration - startup) * remaining)
        except subprocess.TimeoutExpired:
            sig = rng.choice([signal.SIGKILL, signal.SIGINT])
            proc.send_signal(sig)
            kills[sig.name] += 1
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode == 0:  # it finished before the kill: start over on a fresh store
            store.unlink()
            continue
        if store.exists():
            assert _integrity(store) == "ok"
            try:
                finished = _finished(store)
            except sqlite3.OperationalError:  # killed between creating the file and its tables: nothing to check
                finished = {}
            assert all(len(v) == 1 for v in finished.values()), "a configuration finished twice"
        if proc.returncode == 130:  # Ctrl-C caught by ssmlab (not during start-up imports): one line
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    survived = sum(kills.values())
    print(f"survived {survived} kills ({kills['SIGKILL']} SIGKILL, {kills['SIGINT']} SIGINT)")
    assert survived >= 2

    # With the fault handler on, a final run that hangs is stopped with SIGABRT and shows where it was.
    final = subprocess.Popen(_command(experiment, store), env={**_env(), "PYTHONFAULTHANDLER": "1"}, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = final.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        final.send_signal(signal.SIGABRT)
        _, err = final.communicate(timeout=60)
        raise AssertionError(f"the final run hung; its threads:\n{err[-8000:]}") from None
    assert final.returncode == 0, err
    assert _integrity(store) == "ok"
    result = _finished(store)
    assert sorted(result) == sorted(reference)
    for key, metrics in result.items():
        assert len(metrics) == 1, key
        assert metrics == reference[key], key
    # Rows of killed processes may stay 'running' in the file; the store reads them back as interrupted.
    from ssmlab.store import ResultStore

    with ResultStore(store, read_only=True) as rs:
        assert rs.runs(status="running") == []
