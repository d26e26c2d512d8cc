import sqlite3

import pytest

from ssmlab import experiment, registry
from ssmlab.cli import main
from ssmlab.config import ConfigError


PANEL = {"attention", "s4d", "s4", "h3", "hyena", "retnet", "rwkv", "mamba", "mamba2"}


def test_shipped_suites_load_and_expand():
    assert {"quick", "synthetic", "zoo"} <= set(experiment.suite_names())
    for name in experiment.suite_names():
        exp = experiment.load(name)
        assert exp.name == name and exp.models and exp.tasks
    zoo = experiment.expand(experiment.load("zoo"))
    causal = [n for n in registry.names("mixer") if registry.get("mixer", n).obj.causal]
    # Token-level tasks: every causal mixer, and no bidirectional one.
    assert sorted({s.mixer for s in zoo if s.task == "mqar"}) == sorted(causal)
    assert {s.mixer for s in zoo if s.task == "ucr-gunpoint"} == set(registry.names("mixer")) - {"s4nd", "cross-scan"}
    quick = experiment.expand(experiment.load("quick"))
    # The default is the panel on every task, and one bidirectional model on the real data set.
    for task in ("mqar", "selective-copying", "ucr-gunpoint"):
        assert {s.mixer for s in quick if s.task == task} == PANEL
    not_causal = [s for s in quick if experiment._not_causal(s.mixer, s.d_model, s.model_options)]
    assert not_causal and {s.task for s in not_causal} == {"ucr-gunpoint"}
    assert all(s.d_model == 32 and s.n_layers == 2 for s in quick)


@pytest.mark.parametrize("suite", ["quick", "zoo"])
def test_every_model_of_a_suite_gets_the_same_protocol(suite):
    """Zoology's protocol (arXiv 2312.04927): per task, every model the same data, trainer settings and
    learning-rate grid; the zoo is the quick suite with every mixer."""
    specs = experiment.expand(experiment.load(suite))
    for task in {s.task for s in specs}:
        on_task = [s for s in specs if s.task == task]
        trials = {}
        for s in on_task:
            trials.setdefault(experiment.model_label(s), set()).add(
                (repr(sorted(s.task_options.items())), repr(sorted(s.train_options.items())), repr(s.lr_grid), s.seed))
        assert len({frozenset(t) for t in trials.values()}) == 1, task
    quick, zoo = (experiment.load(name) for name in ("quick", "zoo"))
    assert [(t.name, t.options, t.trainer, t.lr_grid) for t in quick.tasks] == \
        [(t.name, t.options, t.trainer, t.lr_grid) for t in zoo.tasks]
    assert quick.trainer == zoo.trainer and quick.lr_grid == zoo.lr_grid and quick.lr_grid


def test_star_runs_image_mixers_on_image_tasks_only():
    """``"*"`` gives the mixers registered with inputs="image" every task with an image_shape, whatever its
    length, and leaves them out of 1-D tasks, even one as long as their test grids, saying why."""
    image_mixers = {e.name for e in registry.entries("mixer") if e.extra["inputs"] == "image"}
    assert {"s4nd", "cross-scan"} <= image_mixers
    exp = experiment.parse({"models": ["*"], "seeds": [0],
                            "tasks": ["mnist-2d", {"name": "listops", "options": {"min_length": 4, "max_length": 16}}]})
    specs = experiment.expand(exp)
    on = lambda task: {s.mixer for s in specs if s.task == task}  # noqa: E731
    assert on("mnist-2d") == set(registry.names("mixer"))
    assert on("listops") == set(registry.names("mixer")) - image_mixers
    (line,) = experiment.left_out(exp)
    assert line.startswith("leaving out cross-scan, s4nd on listops: ") and "image_shape" in line
    # Named explicitly, an image mixer runs where it is put.
    explicit = experiment.parse({"models": ["s4nd"], "tasks": ["listops"], "seeds": [0]})
    assert [s.mixer for s in experiment.expand(explicit)] == ["s4nd"] and experiment.left_out(explicit) == []


def test_left_out_names_bidirectional_mixers_on_lm_tasks():
    exp = experiment.parse({"models": ["*"], "tasks": ["mqar"], "seeds": [0]})
    (line,) = experiment.left_out(exp)
    bidirectional = [n for n in registry.names("mixer") if not registry.get("mixer", n).obj.causal]
    assert line.startswith(f"leaving out {', '.join(bidirectional)} on mqar: not causal")


def test_overrides_are_type_checked(tmp_path):
    exp = experiment.load("quick", ["trainer.lr=1e-4", "seeds=[1, 2]", "defaults.d_model=48", "models=[mamba]"])
    assert exp.trainer["lr"] == 1e-4 and exp.seeds == [1, 2] and exp.defaults.d_model == 48
    specs = experiment.expand(exp)
    assert {s.mixer for s in specs} == {"mamba"} and {s.seed for s in specs} == {1, 2}
    with pytest.raises(ConfigError, match="unknown key.*stepz.*valid keys:.*steps"):
        experiment.load("quick", ["trainer.stepz=3"])
    with pytest.raises(ConfigError, match="TrainConfig.steps: expected int"):
        experiment.load("quick", ["trainer.steps=many"])
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        experiment.load("quick", ["colour=red"])
    with pytest.raises(ConfigError, match="key=value"):
        experiment.load("quick", ["trainer.steps"])


def test_yaml_file_with_hybrid_and_bad_files(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: mine\nmodels:\n  - {mixer: [mamba, attention], d_model: 16, n_layers: 2}\n"
                    "tasks: [mqar]\nseeds: [3]\ntrainer: {steps: 5}\n")
    (spec,) = experiment.expand(experiment.load(str(path)))
    assert spec.mixer == ["mamba", "attention"] and spec.d_model == 16 and spec.seed == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [mamba\ntasks: [mqar]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        experiment.load(str(bad))
    with pytest.raises(ConfigError, match="neither a shipped suite"):
        experiment.load(str(tmp_path / "missing.yaml"))
    path.write_text("models: [mamba]\ntasks: [mqra]\n")
    with pytest.raises(registry.UnknownNameError, match="unknown task 'mqra'"):
        experiment.load(str(path))


def test_interrupted_sweep_skips_finished_runs(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [attention, s4d]\n"
                    "tasks: [{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 32, "
                    "n_test: 8}}]\ntrainer: {steps: 2, batch_size: 4}\n")
    db = tmp_path / "r.sqlite"
    args = ["run", str(path), "--store", str(db), "--no-progress", "--report-dir", str(tmp_path / "rep")]
    assert main(args) == 0
    # A run killed half way leaves a 'running' row; the next sweep redoes it and skips the finished one.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status='running' WHERE model='s4d'")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "attention on mqar (seed 0): already finished" in out and "finished 1 runs" in out
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, status FROM runs ORDER BY id").fetchall()
    assert rows == [("attention", "finished"), ("s4d", "running"), ("s4d", "finished")]
    assert main(args + ["--set", "trainer.steps=two"]) == 1
    assert "expected int" in capsys.readouterr().err


def test_run_leaves_out_tasks_whose_source_is_missing(tmp_path, capsys, monkeypatch):
    from ssmlab.tasks import sources

    def absent(task, package, *parts):
        raise sources.MissingSourceError(f"{task}: the Python package {package!r} is not installed; install it with: "
                                         f"{sources.PIP_DATA}")

    monkeypatch.setattr(sources, "python_package_file", absent)
    monkeypatch.setattr("ssmlab.tasks.timeseries.python_package_file", absent)
    path = tmp_path / "exp.yaml"
    path.write_text("name: mixed\ndefaults: {d_model: 8, n_layers: 1}\nmodels: [s4d]\n"
                    "tasks: [{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 16, "
                    "n_test: 8}}, ucr-gunpoint]\ntrainer: {steps: 1, batch_size: 4}\n")
    args = ["run", str(path), "--store", str(tmp_path / "r.sqlite"), "--no-progress",
            "--report-dir", str(tmp_path / "rep")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "leaving out task ucr-gunpoint" in captured.err and "pip install 'ssmlab[data]'" in captured.err
    assert "finished 1 runs" in captured.out
    assert main([*args, "--tasks", "ucr-gunpoint"]) == 1
    assert "none of the tasks" in capsys.readouterr().err


def test_per_task_trainer_settings_and_command_line_precedence():
    exp = experiment.parse({"models": ["s4d"], "seeds": [0], "trainer": {"lr_grid": [1e-3, 1e-2]},
                            "tasks": ["mqar", {"name": "ucr-gunpoint", "trainer": {"steps": 100, "batch_size": 16}}]})
    gunpoint = [s for s in experiment.expand(exp) if s.task == "ucr-gunpoint"]
    assert [s.train_options for s in gunpoint] == [{"steps": 100, "batch_size": 16, "lr": lr} for lr in (1e-3, 1e-2)]
    assert [s.train_options for s in experiment.expand(exp) if s.task == "mqar"] == [{"lr": 1e-3}, {"lr": 1e-2}]
    with pytest.raises(ConfigError, match="stepz"):
        experiment.parse({"models": ["s4d"], "tasks": [{"name": "mqar", "trainer": {"stepz": 1}}]})


def test_direction_is_read_from_the_instance(tmp_path, capsys):
    """s4, s4d, s5 and tnn built with bidirectional=True are not causal, though their classes are:
    suites, listings and the bidirectional wrapper read the instance."""
    from ssmlab.models import create_mixer

    path = tmp_path / "exp.yaml"
    path.write_text("models:\n  - s4d\n"
                    "  - {mixer: s4d, name: s4d-bi, options: {mixer_options: {bidirectional: true}}}\n"
                    "  - {mixer: [s4d, attention], name: hybrid-bi, options: {mixer_options: "
                    "{s4d: {bidirectional: true}}}}\n  - {mixer: [s4d, attention], name: hybrid}\n"
                    "tasks: [mqar, ucr-gunpoint]\n")
    runs = {}
    for spec in experiment.expand(experiment.load(str(path))):
        runs.setdefault(spec.task, []).append(spec.label or spec.mixer)
    assert runs == {"mqar": ["s4d", "hybrid"], "ucr-gunpoint": ["s4d", "s4d-bi", "hybrid-bi", "hybrid"]}
    with pytest.raises(ValueError, match="must be causal"):
        create_mixer("bidirectional", 16, mixer="s4d", d_state=4, bidirectional=True)
    assert main(["list", "mixers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["s4d"].endswith("causal (bidirectional with bidirectional=True)")
    assert lines["bi-mamba"].endswith("bidirectional") and lines["mamba"].endswith("causal")
    from ssmlab.mixers import is_causal

    for name in ("s4", "s4d", "s5", "tnn"):
        cls = registry.get("mixer", name).obj
        assert cls.causal and is_causal(cls, 16) and not is_causal(cls, 16, bidirectional=True), name
        assert not create_mixer(name, 16, bidirectional=True).causal


def test_param_budget_gives_each_model_the_largest_width_that_fits():
    task = {"name": "mqar", "options": {"vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2}}
    grid = [8, 16, 24, 32, 48]
    exp = experiment.parse({"models": ["attention", "mamba", {"mixer": "s4d", "d_model": 8}], "tasks": [task],
                            "seeds": [0], "param_budget": 20000, "d_model_grid": grid, "defaults": {"n_layers": 2}})
    specs = {s.mixer: s for s in experiment.expand(exp)}
    for mixer in ("attention", "mamba"):
        count = lambda d: experiment.parameter_count(mixer, "mqar", task["options"], {}, d_model=d,  # noqa: E731
                                                     n_layers=2)
        d = specs[mixer].d_model
        assert count(d) <= 20000 and specs[mixer].param_budget == 20000
        assert all(count(larger) > 20000 for larger in grid if larger > d)
    # Mamba's block holds more parameters per width than attention's: the budget gives it a smaller width.
    assert specs["mamba"].d_model < specs["attention"].d_model
    # A model that sets its own width keeps it, outside the budget.
    assert specs["s4d"].d_model == 8 and specs["s4d"].param_budget is None
    with pytest.raises(ConfigError, match="param_budget"):
        experiment.parse({"models": ["s4d"], "tasks": ["mqar"], "param_budget": 0})


def test_rows_matched_to_a_budget_are_named_by_it(tmp_path):
    from ssmlab.report import leaderboard
    from ssmlab.store import ResultStore

    with ResultStore(tmp_path / "r.sqlite") as store:
        for task, d_model, acc in (("mqar", 48, 0.5), ("selective-copying", 32, 0.7)):
            run = {"task": task, "task_options": {}, "train_options": {}, "d_model": d_model, "param_budget": 50000}
            run_id = store.start_run(suite="s", model="mamba", task=task, seed=0, config={"run": run, "train": {}},
                                     environment={})
            store.finish_run(run_id, metrics={"test_accuracy": acc}, n_params=49000, wall_time_s=1.0,
                             peak_memory_mb=None)
        (row,) = leaderboard(store, suite="s")["rows"]
    assert row["key"] == "mamba" and set(row["cells"]) == {"mqar", "selective-copying"}
