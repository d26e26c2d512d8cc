import csv
import sqlite3

import pytest

from ssmlab.bench.efficiency import Measurement, store_measurements
from ssmlab.cli import main
from ssmlab.report import build_report
from ssmlab.store import ResultStore


def _fill(store):
    env = {"torch_version": "test"}
    for model, accs in (("mamba", (0.5, 0.7)), ("s4d", (0.4, 0.4))):
        for seed, acc in enumerate(accs):
            run = store.start_run(suite="quick", model=model, task="mqar", seed=seed, environment=env,
                                  config={"run": {"task_options": {"seq_len": 64}}})
            store.finish_run(run, metrics={"test_accuracy": acc, "test_loss": 1 - acc}, n_params=100, wall_time_s=1.0,
                             peak_memory_mb=None, curves=[(0, "train", "loss", 2.0), (10, "train", "loss", 1.0 - acc)])
    for model, bpb in (("mamba", 1.5), ("s4d", 1.8)):
        lm = store.start_run(suite="lm", model=model, task="shakespeare-char", seed=0, config={}, environment=env)
        store.finish_run(lm, metrics={"test_bits_per_byte": bpb}, n_params=100, wall_time_s=1.0, peak_memory_mb=None)
    store_measurements(store, [Measurement(m, n, 1, 8, t * n, 2 * t * n, 1.0, 1.0, 10)
                               for m, t in (("attention", 1e-3), ("mamba", 2e-3)) for n in (64, 256)],
                       environment=env)


def test_report_tables_csv_and_self_contained_html(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        _fill(store)
        paths = build_report(store, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "`quick`" in md and "`lm`" in md
    assert "**0.600 ± 0.141**" in md  # mamba's mean and std over two seeds, best of its column
    assert "| `s4d` | 0.400 ± 0.000 |" in md
    assert "lower is better" in md and "**1.500**" in md  # bits per byte: the lower one is marked
    assert "## Efficiency" in md and "| `mamba` | 64, 256 | 1.00 |" in md
    assert "mean wall time of one run" in md and "mqar accuracy ↑" in md and "shakespeare-char bits_per_byte ↓" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert {(r["suite"], r["model"]) for r in rows} == {("quick", "mamba"), ("quick", "s4d"), ("lm", "mamba"),
                                                        ("lm", "s4d")}
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(paths["figures"]) >= 2
    assert "src='http" not in page and "<link" not in page  # nothing fetched when opened


def test_cli_report_and_bad_stores(tmp_path, capsys):
    store_path = tmp_path / "r.sqlite"
    with ResultStore(store_path) as store:
        _fill(store)
    assert main(["report", "--store", str(store_path), "--out", str(tmp_path / "o"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "suite quick" in out and "report:" in out and (tmp_path / "o" / "report.html").is_file()
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 1
    assert "no results store" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["report", "--store", str(junk)]) == 1
    assert "not a usable ssmlab results database" in capsys.readouterr().err
    assert junk.read_text() == "not a database"  # left untouched


def test_cli_efficiency_stores_measurements(tmp_path, capsys):
    store_path = tmp_path / "e.sqlite"
    assert main(["efficiency", "attention,s4d", "--lengths", "8", "16", "--d-model", "8", "--batch-size", "1",
                 "--repeats", "1", "--no-memory", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "time ~ L^k" in out and "stored 4 measurements" in out
    rows = sqlite3.connect(store_path).execute("select model, task from runs where suite='efficiency'").fetchall()
    assert sorted(rows) == [("attention", "length-16"), ("attention", "length-8"), ("s4d", "length-16"),
                            ("s4d", "length-8")]
    assert main(["efficiency", "atention", "--store", str(store_path)]) == 2


def test_cli_efficiency_mixer_options_and_a_failing_mixer(tmp_path, capsys):
    db = tmp_path / "e.sqlite"
    argv = ["efficiency", "attention,hyena", "--lengths", "8", "16", "--d-model", "8", "--batch-size", "1",
            "--repeats", "1", "--no-memory", "--store", str(db)]
    assert main([*argv, "--mixer-option", "hyena.l_max=8"]) == 1  # 16 > l_max: hyena fails, attention is kept
    out = capsys.readouterr().out
    assert "hyena not measured: hyena: sequence length 16 exceeds l_max=8" in " ".join(out.split())
    assert "stored 2 measurements" in out
    assert main([*argv, "--mixer-option", "hyena.l_max=16"]) == 0
    assert "stored 4 measurements" in capsys.readouterr().out
    assert main([*argv, "--mixer-option", "mamba.d_state=4"]) == 1
    assert "MIXER.OPTION=VALUE" in capsys.readouterr().err
