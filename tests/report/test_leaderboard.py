"""Rankings: each task's own metric and direction, and cells that average only seeds of one configuration."""

import csv

import pytest

from ssmlab import registry
from ssmlab.report import build_report, format_table, leaderboard
from ssmlab.report.build import markdown_tables, smooth, suite_tables
from ssmlab.store import ResultStore
from ssmlab.tasks.base import task_metric

ENV = {"torch_version": "test"}


def _run(store, suite, model, task, seed, metrics, *, task_options=None, d_model=64, steps=100, wall=1.0):
    config = {"run": {"mixer": model, "task": task, "seed": seed, "task_options": task_options or {},
                      "model_options": {}, "d_model": d_model, "n_layers": 2, "label": None, "train_options": {}},
              "train": {"steps": steps, "lr": 1e-3, "seed": seed}}
    run = store.start_run(suite=suite, model=model, task=task, seed=seed, config=config, environment=ENV)
    store.finish_run(run, metrics=metrics, n_params=1000 * d_model, wall_time_s=wall, peak_memory_mb=None,
                     curves=[(s, "train", "loss", 2.0 / (1 + s)) for s in range(0, 50, 5)])


def test_tasks_declare_metric_and_direction():
    assert task_metric("mqar") == ("accuracy", False)
    assert task_metric("forecast-co2") == ("mse", True)
    assert task_metric("shakespeare-char") == ("bits_per_byte", True)


def test_lower_is_better_task_marks_the_lowest(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for model, mse in (("mamba", 0.20), ("s4d", 0.50), ("attention", 0.35)):
            _run(store, "fc", model, "forecast-co2", 0, {"test_mse": mse, "test_mae": mse, "test_loss": mse})
        board = leaderboard(store, suite="fc")
    text = format_table(board)
    assert "forecast-co2 mse ↓" in text
    assert "0.200 *" in text and "0.500 *" not in text and "0.350 *" not in text
    assert "**0.200**" in markdown_tables([{**board, "suite": "fc"}])


def test_timeseries_leaderboard_includes_forecasting_tasks(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for model in ("mamba", "s4d"):
            _run(store, "timeseries", model, "ucr-gunpoint", 0, {"test_accuracy": 0.9, "test_loss": 0.3})
            _run(store, "timeseries", model, "forecast-co2", 0, {"test_mse": 0.1, "test_mae": 0.2, "test_loss": 0.1})
            _run(store, "timeseries", model, "forecast-airline", 0, {"test_mse": 0.4, "test_mae": 0.5, "test_loss": 0.4})
        (board,) = suite_tables(store)
    columns = {c["key"]: (c["metric"], c["lower_is_better"]) for c in board["columns"]}
    assert columns == {"ucr-gunpoint": ("accuracy", False), "forecast-co2": ("mse", True),
                       "forecast-airline": ("mse", True)}
    assert all(len(r["cells"]) == 3 for r in board["rows"])
    text = format_table(board)
    assert "forecast-airline mse ↓" in text and "ucr-gunpoint accuracy ↑" in text


def test_runs_of_different_configurations_are_never_averaged(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for seed, acc in ((0, 0.5), (1, 0.7)):
            _run(store, "s", "mamba", "mqar", seed, {"test_accuracy": acc})
        # The same model on another task setting, and a second sweep with another trainer setting.
        _run(store, "s", "mamba", "mqar", 0, {"test_accuracy": 0.1}, task_options={"seq_len": 256})
        _run(store, "s", "mamba", "mqar", 0, {"test_accuracy": 0.9}, steps=1000, wall=10.0)
        _run(store, "s", "s4d", "mqar", 0, {"test_accuracy": 0.3}, wall=3.0)
        board = leaderboard(store, suite="s")
    cells = {(r["key"], c): cell for r in board["rows"] for c, cell in r["cells"].items()}
    assert cells[("mamba (train.steps=100)", "mqar (seq_len=default)")] == (pytest.approx(0.6), pytest.approx(0.1414, 1e-3),
                                                                     2)
    assert cells[("mamba (train.steps=100)", "mqar (seq_len=256)")] == (0.1, 0.0, 1)
    assert cells[("mamba (train.steps=1000)", "mqar (seq_len=default)")] == (0.9, 0.0, 1)
    assert cells[("s4d", "mqar (seq_len=default)")] == (0.3, 0.0, 1)
    assert len(cells) == 4
    times = {r["key"]: r["time_s"] for r in board["rows"]}
    assert times == {"mamba (train.steps=100)": 1.0, "mamba (train.steps=1000)": 10.0, "s4d": 3.0}
    assert "time/run (s, mean)" in format_table(board)


def test_chance_and_published_figures_are_shown(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for model, acc in (("mamba", 0.95), ("s4", 0.2)):
            _run(store, "syn", model, "selective-copying", 0, {"test_accuracy": acc}, task_options={"vocab_size": 16})
            _run(store, "syn", model, "mqar", 0, {"test_accuracy": acc}, task_options={"vocab_size": 64})
        paths = build_report(store, tmp_path / "out")
        (board,) = suite_tables(store)
    chance = {c["key"]: c["chance"] for c in board["columns"]}
    assert chance == {"mqar": pytest.approx(2 / 64), "selective-copying": pytest.approx(1 / 14)}
    assert "(chance)" in format_table(board)
    md = paths["markdown"].read_text()
    assert "mamba 0.998 published (Mamba, arXiv 2312.00752, Table 1" in md and "s4 0.183 published" in md
    assert "chance 0.031" in md
    assert len(paths["figures"]) == 2  # small multiples of the curves, and the metric against parameters
    rows = list(csv.DictReader(open(paths["csv"])))
    assert {(r["model"], r["task"], r["metric"]) for r in rows} >= {("mamba", "mqar", "accuracy")}


def test_smooth_is_a_debiased_moving_average():
    assert smooth([1.0, 1.0, 1.0], span=5) == pytest.approx([1.0, 1.0, 1.0])
    assert smooth([0.0, 10.0], span=1) == [0.0, 10.0]
    out = smooth([0.0] * 10 + [10.0] * 10, span=3)
    assert out[9] == 0.0 and 0 < out[10] < 10 and out[-1] == pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize("name", registry.names("task"))
def test_every_task_declares_a_metric_its_runs_record(name):
    """The class attributes are what ranks; the metric shown by ``ssmlab list`` must agree with them."""
    entry = registry.get("task", name)
    metric, lower = task_metric(name)
    assert isinstance(lower, bool) and metric in ("accuracy", "mse", "bits_per_byte")
    assert lower == (metric != "accuracy")
    assert entry.extra.get("metric", metric) == metric
