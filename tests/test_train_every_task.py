"""`ssmlab train MIXER TASK` runs a short training on every registered task, with its head and metric."""

import json
import sqlite3

import pytest

from ssmlab import registry
from ssmlab.cli import main
from ssmlab.tasks import create_task, missing_source

# Small options per task, so that every task trains in seconds; a task missing here fails the test.
SMALL = {
    "copying": ["num_tokens=3", "delay=5"],
    "induction-heads": ["seq_len=16"],
    "listops": ["min_length=20", "max_length=60", "max_depth=3"],
    "mqar": ["seq_len=16", "num_kv_pairs=2", "vocab_size=16"],
    "path-x": ["n_train=8", "n_val=4", "n_test=4"],
    "pathfinder": ["resolution=32"],
    "selective-copying": ["seq_len=16", "num_tokens=2"],
    "enwik-gensim": ["seq_len=32"],
    "shakespeare-char": ["seq_len=32"],
    "lra-retrieval": ["max_length=64"],
    "lra-text": ["max_length=64"],
    "lra-image": [],
    "forecast-co2": ["context=32", "horizon=8"],
    "forecast-airline": [],
    "forecast-sunspots": [],
    "spoken-digits": ["n_train=8", "n_val=4", "n_test=4"],
    "ucr-arrowhead": ["n_train=16", "n_val=4", "n_test=8"],
    "ucr-acsf1": [],
    "ucr-gunpoint": [],
    "ucr-italypowerdemand": [],
    "ucr-osuleaf": [],
    "uea-basicmotions": [],
    "uea-japanesevowels": [],
    "mnist-2d": [],
    "fashion-mnist-2d": [],
}


@pytest.mark.parametrize("task", registry.names("task"))
def test_train_runs_on_every_task(task, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSMLAB_CACHE", str(tmp_path / "cache"))
    assert task in SMALL, f"add small options for task {task!r} to SMALL"
    entry = registry.get("task", task)
    missing = missing_source(create_task(task))
    if missing:
        pytest.skip(missing)
    options = SMALL[task]
    if not any(o.startswith("n_train") for o in options):
        options = options + ["n_train=32", "n_val=8", "n_test=8"]
    db = tmp_path / "r.sqlite"
    mixer = "s4d"
    argv = ["train", mixer, task, "--steps", "2", "--batch-size", "4", "--d-model", "8", "--n-layers", "1",
            "--store", str(db), "--no-progress", "--model-option", "mixer_options={d_state: 4}"]
    for o in options:
        argv += ["--task-option", o]
    assert main(argv) == 0, capsys.readouterr().err
    with sqlite3.connect(db) as conn:
        (metrics,) = conn.execute("SELECT metrics FROM runs WHERE status='finished'").fetchone()
    metrics = json.loads(metrics)
    assert f"test_{entry.extra['metric']}" in metrics and "test_loss" in metrics
