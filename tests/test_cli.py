import sqlite3
import subprocess
import sys

from ssmlab.cli import main
from ssmlab.tasks import create_task, missing_source


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "1706.03762" in out and "mqar" in out


def test_unknown_mixer_is_an_error(capsys, tmp_path):
    assert main(["run", "--mixers", "atention", "--store", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "unknown mixer 'atention'" in err and "Did you mean attention" in err


def test_help_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "ssmlab.cli", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--mixers" in proc.stdout


def test_bad_argument_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "ssmlab.cli", "run", "--steps", "many"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_run_writes_store_and_prints_leaderboard(capsys, tmp_path):
    db = tmp_path / "r.sqlite"
    assert main(["run", "--mixers", "attention", "--steps", "3", "--d-model", "16", "--n-layers", "1",
                 "--store", str(db), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mqar" in out and "selective-copying" in out and "attention" in out
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, task, status FROM runs").fetchall()
    # One run per value of the suite's learning-rate grid on the token-level tasks, one learning rate on GunPoint.
    expected = [("attention", "mqar", "finished"), ("attention", "selective-copying", "finished")] * 2
    if missing_source(create_task("ucr-gunpoint")) is None:  # the quick suite's real data set, from aeon
        expected.append(("attention", "ucr-gunpoint", "finished"))
    assert sorted(rows) == sorted(expected)


def test_train_is_a_one_run_experiment(capsys, tmp_path):
    """`ssmlab train` goes through the experiment's expansion: a bidirectional mixer is not trained
    on a language-model task, as `ssmlab run` leaves it out, and no run is recorded."""
    db = tmp_path / "r.sqlite"
    assert main(["train", "bi-mamba", "mqar", "--steps", "1", "--d-model", "8", "--n-layers", "1",
                 "--store", str(db), "--no-progress"]) == 1
    assert "cannot train bi-mamba on mqar: not causal" in capsys.readouterr().err
    assert not db.exists()
