import sqlite3

import pytest

from ssmlab.report import format_table, leaderboard
from ssmlab.store import ResultStore, StoreError


def test_round_trip_and_leaderboard(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for seed, acc in [(0, 0.5), (1, 0.7)]:
            rid = store.start_run(suite="s", model="m1", task="mqar", seed=seed, config={"a": 1})
            store.finish_run(rid, metrics={"test_accuracy": acc}, n_params=10, wall_time_s=1.0, peak_memory_mb=5.0,
                             curves=[(0, "train", "loss", 2.0)])
        rid = store.start_run(suite="s", model="m2", task="mqar", seed=0, config={})
        store.finish_run(rid, metrics={"test_accuracy": 0.9}, n_params=20, wall_time_s=2.0, peak_memory_mb=None)
        running = store.start_run(suite="s", model="m3", task="mqar", seed=0, config={})
        board = leaderboard(store, suite="s")
    rows = {r["model"]: r for r in board["rows"]}
    assert set(rows) == {"m1", "m2"}  # the unfinished run is not on the board
    assert rows["m1"]["cells"]["mqar"][0] == pytest.approx(0.6)
    assert rows["m1"]["cells"]["mqar"][2] == 2
    text = format_table(board)
    assert "0.900 *" in text and "0.600 ± 0.141" in text
    # Readable with plain sqlite3, as the sqlite3 command would.
    with sqlite3.connect(path) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM runs").fetchall())
        assert statuses[running] == "running"
        env = conn.execute("SELECT environment FROM runs LIMIT 1").fetchone()[0]
        assert "torch_version" in env and "git_commit" in env


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_text("this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable"):
        ResultStore(path)
    assert path.read_text().startswith("this is not")
