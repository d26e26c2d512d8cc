"""A run killed with SIGKILL and started again with the same command finishes with the same metrics
as a run that was never interrupted (CPU, same seed)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

COMMAND = ["train", "s4d", "selective-copying", "--steps", "400", "--batch-size", "8", "--d-model", "16",
           "--n-layers", "1", "--checkpoint-every", "20", "--task-option", "n_train=256",
           "--task-option", "n_test=32", "--no-progress"]


def _run(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "ssmlab.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _metrics(db):
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT metrics FROM runs WHERE status='finished'").fetchall()
    assert len(rows) == 1
    return json.loads(rows[0][0])


def test_sigkill_then_same_command_resumes_to_the_same_result(tmp_path):
    straight = _run([*COMMAND, "--store", "a.sqlite", "--checkpoint-dir", "ck-a"], tmp_path)
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    args = [*COMMAND, "--store", "b.sqlite", "--checkpoint-dir", "ck-b"]
    victim = _run(args, tmp_path)
    ckpt = Path(tmp_path, "ck-b", "checkpoint.pt")
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed; make it longer"
    time.sleep(0.3)  # a few more steps past the first checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    again = _run(args, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert _metrics(tmp_path / "b.sqlite") == _metrics(tmp_path / "a.sqlite")
    with sqlite3.connect(tmp_path / "b.sqlite") as conn:  # the killed attempt stays recorded as unfinished
        assert [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")] == ["running", "finished"]
