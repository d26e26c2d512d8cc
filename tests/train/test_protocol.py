"""The training protocol of a suite (Zoology, arXiv 2312.04927): one learning-rate grid shared by every
model, the choice made on the validation split, test reported for it, every trial kept in the store."""

import sqlite3

import pytest

from ssmlab import experiment
from ssmlab.cli import main
from ssmlab.report import format_table, leaderboard
from ssmlab.store import ResultStore
from ssmlab.train import sweep
from ssmlab.train.trainer import TrainResult

LOW, HIGH = 1e-3, 1e-2

# A planted model: at LOW it is the better model on the validation split, at HIGH on the test split.
PLANTED = {LOW: {"val_accuracy": 0.9, "test_accuracy": 0.6}, HIGH: {"val_accuracy": 0.5, "test_accuracy": 0.95}}


def _planted_train(spec, config, *args, **kwargs):
    lr = spec.train_options.get("lr", config.lr)
    # The seed moves every figure a little, so that the cell's spread is over seeds.
    metrics = {k: v + 0.01 * spec.seed for k, v in PLANTED[lr].items()}
    return TrainResult(metrics={**metrics, "val_loss": 1.0, "test_loss": 1.0}, n_params=10, wall_time_s=0.1)


SUITE = ("name: planted\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [attention, s4d]\n"
         "tasks: [{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 16, n_test: 8}}]\n"
         f"seeds: [0, 1]\ntrainer: {{steps: 1, batch_size: 4, lr_grid: [{HIGH}, {LOW}]}}\n")


def test_the_learning_rate_is_chosen_on_validation_and_every_trial_is_stored(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "train_spec", _planted_train)
    path, db = tmp_path / "planted.yaml", tmp_path / "r.sqlite"
    path.write_text(SUITE)
    assert main(["run", str(path), "--store", str(db), "--no-progress", "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    # Every trial (2 models x 2 learning rates x 2 seeds) is in the store, with its learning rate.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE status='finished'").fetchone() == (8,)
    with ResultStore(db) as store:
        lrs = sorted((r["model"], r["config"]["run"]["train_options"]["lr"], r["seed"]) for r in store.runs())
        assert lrs == sorted((m, lr, s) for m in ("attention", "s4d") for lr in (LOW, HIGH) for s in (0, 1))
        board = leaderboard(store, suite="planted")
    (column,) = board["columns"]
    for row in board["rows"]:
        # Chosen on validation (LOW), though HIGH is better on test; the cell is LOW's test metric over two seeds.
        assert row["lr"] == {column["key"]: LOW}
        mean, std, n = row["cells"][column["key"]]
        assert mean == pytest.approx(0.605) and n == 2 and std > 0
        trials = row["trials"][column["key"]]
        assert [(t["lr"], t["chosen"], len(t["run_ids"])) for t in trials] == [(LOW, True, 2), (HIGH, False, 2)]
        assert trials[1]["test"] == pytest.approx(0.955)
    table = format_table(board)
    assert "0.605 ± 0.007 (lr 0.001)" in table and "0.955" not in table
    assert "chosen on the validation split" in table and "0.001, 0.01" in table
    assert "0.605 ± 0.007 (lr 0.001)" in out
    trials_csv = (tmp_path / "rep" / "trials.csv").read_text().splitlines()
    assert len(trials_csv) == 1 + 4 and sum(line.count(",True,") for line in trials_csv) == 2


def test_ties_on_validation_go_to_the_lower_validation_loss(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for lr, val_loss in ((LOW, 0.5), (HIGH, 0.2)):
            config = {"run": {"task": "mqar", "task_options": {}, "train_options": {"lr": lr},
                              "lr_grid": [LOW, HIGH], "seed": 0}, "train": {}}
            run = store.start_run(suite="s", model="m", task="mqar", seed=0, config=config, environment={})
            store.finish_run(run, metrics={"val_accuracy": 1.0, "val_loss": val_loss, "test_accuracy": lr},
                             n_params=1, wall_time_s=1.0, peak_memory_mb=None)
        (row,) = leaderboard(store, suite="s")["rows"]
    assert row["lr"] == {"mqar": HIGH} and row["cells"]["mqar"][0] == HIGH


def test_runs_of_two_grids_are_not_mixed_and_runs_without_a_grid_are_cells_as_before(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for grid, lr, acc in (([LOW, HIGH], LOW, 0.7), ([LOW, HIGH], HIGH, 0.8), ([LOW], LOW, 0.3), (None, LOW, 0.1)):
            run_part = {"task": "mqar", "task_options": {}, "train_options": {"lr": lr}, "seed": 0}
            if grid is not None:
                run_part["lr_grid"] = grid
            run = store.start_run(suite="s", model="m", task="mqar", seed=0, config={"run": run_part, "train": {}},
                                  environment={})
            store.finish_run(run, metrics={"val_accuracy": acc, "test_accuracy": acc}, n_params=1, wall_time_s=1.0,
                             peak_memory_mb=None)
        board = leaderboard(store, suite="s")
    cells = {c["key"]: board["rows"][0]["cells"][c["key"]][0] for c in board["columns"]}
    assert sorted(cells.values()) == [0.1, 0.3, 0.8] and len(board["columns"]) == 3
    assert sorted(board["rows"][0]["lr"].values()) == [LOW, HIGH]


def test_the_trainer_records_validation_metrics(tmp_path):
    from ssmlab.train.trainer import TrainConfig

    spec = sweep.RunSpec("s4d", "mqar", 0, {"vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "n_train": 8,
                                            "n_val": 4, "n_test": 4}, d_model=8, n_layers=1)
    result = sweep.train_spec(spec, TrainConfig(steps=1, batch_size=2, progress=False))
    assert {"val_accuracy", "val_loss", "test_accuracy", "test_loss"} <= set(result.metrics)
    assert any(c[1] == "val" and c[2] == "accuracy" for c in result.curves)


def test_a_grid_gives_every_model_the_same_trials():
    exp = experiment.parse({"models": ["attention", "s4d"], "seeds": [0, 1],
                            "tasks": ["mqar", {"name": "induction-heads", "trainer": {"lr": 5e-4}},
                                      {"name": "copying", "trainer": {"lr_grid": ["1e-4"]}}],
                            "trainer": {"lr": 1e-3, "lr_grid": [3e-3, "1e-2"]}})
    specs = experiment.expand(exp)
    trials = lambda task, mixer: sorted((s.train_options.get("lr"), s.seed) for s in specs  # noqa: E731
                                        if s.task == task and s.mixer == mixer)
    for mixer in ("attention", "s4d"):
        assert trials("mqar", mixer) == [(3e-3, 0), (3e-3, 1), (1e-2, 0), (1e-2, 1)]
        # A task's own lr is one learning rate, no sweep; a task's own grid replaces the experiment's.
        assert trials("induction-heads", mixer) == [(5e-4, 0), (5e-4, 1)]
        assert trials("copying", mixer) == [(1e-4, 0), (1e-4, 1)]
    assert {tuple(s.lr_grid or ()) for s in specs} == {(3e-3, 1e-2), (), (1e-4,)}
    for bad, match in (([], "non-empty"), ([1e-3, 1e-3], "twice"), ([-1], "positive"), ("fast", "non-empty")):
        with pytest.raises(experiment.ConfigError, match=match):
            experiment.parse({"models": ["s4d"], "tasks": ["mqar"], "trainer": {"lr_grid": bad}})


def test_the_command_line_lr_replaces_the_grid(tmp_path):
    from ssmlab.cli import _experiment_from_args, build_parser

    path = tmp_path / "planted.yaml"
    path.write_text(SUITE)
    args = build_parser().parse_args(["run", str(path), "--lr", "3e-4"])
    specs = experiment.expand(_experiment_from_args(args))
    assert {s.train_options.get("lr") for s in specs} == {None} and {s.lr_grid for s in specs} == {None}
    assert {s.seed for s in specs} == {0, 1} and len(specs) == 4
