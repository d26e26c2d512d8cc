"""Bad input and broken environments give one line on stderr, a non-zero exit and an untouched store.

Each case is the ``ssmlab`` command line run as a process: one Python process imports ssmlab
once and forks a child per case, which runs ``sys.exit(ssmlab.cli.main(argv))`` with stderr
sent to a file, exactly as the entry point does (an exception that escapes prints its
traceback). Ctrl-C is sent as a real SIGINT to a real ``python -m ssmlab.cli`` process.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssmlab.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
TINY_TASK = "{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 32, n_test: 8}}"
RUNNER = """
import json, os, sys, time
from ssmlab.cli import main
cases = json.load(open(sys.argv[1]))
results = []
for i, argv in enumerate(cases):
    t = time.perf_counter()
    err = sys.argv[1] + f".{i}.err"
    pid = os.fork()
    if pid == 0:
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append([os.waitstatus_to_exitcode(status), open(err).read()])
    print(f"{time.perf_counter() - t:.1f}s", argv[:2], file=sys.__stdout__, flush=True)
json.dump(results, open(sys.argv[1] + ".out", "w"))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_cases(tmp_path: Path, cases: list[list[str]]) -> list[tuple[int, str]]:
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    subprocess.run([sys.executable, str(runner), str(spec)], env=_env(), cwd=tmp_path, check=True, timeout=600)
    return [tuple(r) for r in json.loads(Path(str(spec) + ".out").read_text())]


def _store_with_a_run(path: Path) -> Path:
    with ResultStore(path) as store:
        run = store.start_run(suite="old", model="s4d", task="mqar", seed=0, config={"a": 1}, environment={})
        store.finish_run(run, metrics={"test_accuracy": 0.5}, n_params=1, wall_time_s=1.0, peak_memory_mb=None)
    return path


def terminal_signals() -> None:
    """In the child before exec: Ctrl-C as from a terminal. A test process started as a background job of a
    non-interactive shell ignores SIGINT, and its children would inherit that (then no Ctrl-C reaches them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _rows(path: Path) -> list:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT suite, model, status FROM runs ORDER BY id").fetchall()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the runner forks")
def test_every_error_is_one_line_and_writes_nothing(tmp_path):
    store = _store_with_a_run(tmp_path / "r.sqlite")
    fresh = tmp_path / "fresh" / "r.sqlite"  # must not even be created
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notweights").mkdir()
    (tmp_path / "notweights" / "config.json").write_text("this is not json")
    corrupt = _store_with_a_run(tmp_path / "corrupt.sqlite")
    with ResultStore(corrupt) as s:  # enough rows for several pages, then one page overwritten
        for i in range(200):
            s.start_run(suite="x", model="m", task="t", seed=i, config={"pad": "x" * 300}, environment={})
    size = corrupt.stat().st_size
    with open(corrupt, "r+b") as f:  # every page after the first few: the runs table's pages among them
        f.seek(4096 * 3)
        f.write(b"\xff" * (size - 4096 * 3))
    yamls = {
        "noseeds": f"name: e\nmodels: [s4d]\ntasks: [{TINY_TASK}]\nseeds: []\n",
        "badname": f"name: e\nmodels: [{{mixer: s4d, name: ../../..}}]\ntasks: [{TINY_TASK}]\n",
        "badsuite": f"name: ../escape\nmodels: [s4d]\ntasks: [{TINY_TASK}]\n",
        "badtype": "name: e\nmodels: [s4d]\ntasks: [{name: mqar, options: {seq_len: 16.5}}]\n",
        "badmixeroptions": f"name: e\nmodels: [{{mixer: s4d, options: {{mixer_options: 5}}}}]\ntasks: [{TINY_TASK}]\n",
    }
    for name, text in yamls.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    train = ["train", "s4d", "mqar", "--steps", "1", "--d-model", "8", "--n-layers", "1", "--no-progress"]
    cases = {
        "model option of the wrong type": [*train, "--model-option", "mixer_options=5", "--store", str(store)],
        "task option of the wrong type": [*train, "--task-option", "seq_len=16.5", "--store", str(store)],
        "store under a file": [*train, "--store", str(tmp_path / "a-file" / "r.sqlite")],
        "batch size 0": [*train, "--batch-size", "0", "--store", str(store)],
        "efficiency bad option": ["efficiency", "s4d", "--lengths", "16", "--mixer-option", "s4d.d_state=abc",
                                  "--store", str(fresh)],
        "efficiency batch size 0": ["efficiency", "s4d", "--lengths", "16", "--batch-size", "0",
                                    "--store", str(fresh)],
        "efficiency repeats 0": ["efficiency", "s4d", "--lengths", "16", "--repeats", "0", "--store", str(fresh)],
        "generate on a file": ["generate", "--checkpoint", str(tmp_path / "a-file"), "--prompt", "hi"],
        "generate on a folder without weights": ["generate", "--checkpoint", str(tmp_path / "notweights"),
                                                 "--prompt", "hi"],
        "report on a corrupted store": ["report", "--store", str(corrupt), "--out", str(tmp_path / "rep")],
        "run on a corrupted store": ["run", str(tmp_path / "badname.yaml").replace("badname", "noseeds"),
                                     "--set", "seeds=[0]", "--store", str(corrupt), "--no-progress"],
        "seeds: []": ["run", str(tmp_path / "noseeds.yaml"), "--store", str(fresh)],
        "model name ../../..": ["run", str(tmp_path / "badname.yaml"), "--store", str(fresh)],
        "suite name ../escape": ["run", str(tmp_path / "badsuite.yaml"), "--store", str(fresh)],
        "run option of the wrong type": ["run", str(tmp_path / "badtype.yaml"), "--store", str(fresh)],
        "run mixer_options not a mapping": ["run", str(tmp_path / "badmixeroptions.yaml"), "--store", str(fresh)],
    }
    if not torch.cuda.is_available():
        cases["cuda on a CPU build"] = [*train, "--device", "cuda", "--store", str(store)]
        cases["efficiency cuda on a CPU build"] = ["efficiency", "s4d", "--lengths", "16", "--device", "cuda",
                                                   "--store", str(fresh)]
    before = _rows(store)
    results = dict(zip(cases, run_cases(tmp_path, list(cases.values()))))
    problems = []
    for name, (code, err) in results.items():
        lines = err.strip().splitlines()
        if code == 0 or "Traceback" in err or len(lines) != 1 or "error" not in lines[0]:
            problems.append(f"{name}: exit {code}, stderr {err!r}")
    assert not problems, "\n".join(problems)
    assert "CUDA" in results.get("cuda on a CPU build", (0, "CUDA"))[1]
    assert "is damaged" in results["report on a corrupted store"][1]
    assert "seeds" in results["seeds: []"][1]
    assert "../../.." in results["model name ../../.."][1] and "not allowed" in results["model name ../../.."][1]
    assert "a-file is a file" in results["store under a file"][1]
    assert _rows(store) == before
    assert not fresh.exists() and not fresh.parent.exists()
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the runner forks")
def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "a-file").write_text("x")
    argv = ["train", "s4d", "mqar", "--steps", "1", "--store", str(tmp_path / "a-file" / "r.sqlite")]
    (code, err), (code_debug, err_debug) = run_cases(tmp_path, [argv, ["--debug", *argv]])
    assert code == code_debug == 1
    assert "Traceback" not in err and "Traceback" in err_debug and "StoreError" in err_debug


def test_ctrl_c_is_one_line_and_records_the_run_as_interrupted(tmp_path):
    experiment = tmp_path / "long.yaml"
    experiment.write_text(f"name: long\ndefaults: {{d_model: 8, n_layers: 1}}\nmodels: [s4d]\n"
                          f"tasks: [{TINY_TASK}]\ntrainer: {{steps: 1000000, batch_size: 4}}\n")
    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "ssmlab.cli", "run", str(experiment), "--store", str(db),
                             "--no-progress"], env={**_env(), "PYTHONFAULTHANDLER": "1"}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_signals)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if ("long", "s4d", "running") in _rows(db):
                    break
            except sqlite3.OperationalError:  # not created yet
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the sweep never started its run")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # show where it was: the fault handler prints every thread on SIGABRT
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"no exit 60 s after Ctrl-C; its threads:\n{err[-6000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert _rows(db) == [("long", "s4d", "interrupted")]
