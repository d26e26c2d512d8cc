"""The README's examples run: every ```python block as written, every command of its ```bash blocks
either run (long ones with small overrides appended) or listed here with the reason it is not."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ssmlab.cli import main
from ssmlab.tasks import create_task, missing_source

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_TRAIN = ["--steps", "2", "--batch-size", "4", "--no-progress"]
TINY_MQAR = "{name: mqar, options: {vocab_size: 16, seq_len: 16, num_kv_pairs: 2, n_train: 64, n_val: 16, n_test: 16}}"
TINY_SUITE = ["--mixers", "s4d", "--set", f"tasks=[{TINY_MQAR}]", "--d-model", "16", *TINY_TRAIN]
TINY_TEXT = ["--task-option", "seq_len=32", "--task-option", "n_train=64", "--task-option", "n_val=4",
             "--task-option", "n_test=4"]
SETUP = "creates a virtual environment and installs packages from PyPI: CI's setup step, not a test"
EXPERIMENT = f"""name: my-experiment
models: [s4d]
tasks: [{TINY_MQAR}]
trainer: {{steps: 2, batch_size: 4}}
"""

# Each command of the README's bash blocks: the arguments appended when it is run here (later
# options win over the README's), or the reason it is not run. Commands run in README order in
# one working directory, so `report` and `sqlite3` read the store the runs before them wrote.
COMMANDS = {
    "ssmlab list": [],
    "ssmlab run": TINY_SUITE,
    "ssmlab run synthetic --set trainer.lr=1e-3 --set seeds=[0,1]": TINY_SUITE,
    "ssmlab run my-experiment.yaml": ["--no-progress"],
    "ssmlab run quick --executor ray --address HOST:6379": "needs a Ray cluster at HOST:6379",
    "ssmlab train s4d mqar --steps 200": TINY_TRAIN + ["--task-option", "n_train=64", "--task-option", "n_test=16"],
    "ssmlab train mamba2 shakespeare-char --steps 500 --save my-lm": TINY_TRAIN + TINY_TEXT,
    "ssmlab generate --checkpoint my-lm --prompt ROMEO: --max-new-tokens 200 --temperature 0.8 --top-k 40":
        ["--max-new-tokens", "20"],
    "ssmlab efficiency attention,mamba,s4d --lengths 256 1024 4096":
        ["--lengths", "16", "32", "--repeats", "1", "--d-model", "16", "--batch-size", "1"],
    "ssmlab report": ["--no-figures"],
    "sqlite3 ssmlab-results/results.sqlite select model, task, metrics from runs": [],
}
NEEDS_SHAKESPEARE = ("shakespeare-char", "--checkpoint my-lm")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _commands() -> list[list[str]]:
    return [shlex.split(line, comments=True) for block in _blocks("bash") for line in block.splitlines()
            if shlex.split(line, comments=True)]


def _key(argv: list[str]) -> str:
    return " ".join(argv)


def test_every_readme_command_is_run_or_has_a_reason():
    readme = [_key(argv) for argv in _commands() if not _is_setup(argv)]
    assert sorted(readme) == sorted(COMMANDS), "a README command has no entry in COMMANDS, or an entry is stale"


def _is_setup(argv: list[str]) -> bool:
    return argv[:3] == ["python3", "-m", "venv"]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})


def test_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSMLAB_STORE", raising=False)
    (tmp_path / "my-experiment.yaml").write_text(EXPERIMENT)
    shakespeare = missing_source(create_task("shakespeare-char"))
    not_run = {}
    for argv in _commands():
        key = _key(argv)
        if _is_setup(argv):
            not_run[key] = SETUP
            continue
        extra = COMMANDS[key]
        if isinstance(extra, str):
            not_run[key] = extra
        elif shakespeare and any(word in key for word in NEEDS_SHAKESPEARE):
            not_run[key] = f"shakespeare-char's source is missing: {shakespeare}"
        elif argv[0] == "sqlite3":
            if shutil.which("sqlite3") is None:
                not_run[key] = "no sqlite3 program on this machine"
                continue
            out = subprocess.run(argv + extra, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "mqar" in out.stdout, out.stderr
        else:
            assert argv[0] == "ssmlab"
            code = main(argv[1:] + extra)
            captured = capsys.readouterr()
            assert code == 0, f"{key}: exit {code}\n{captured.err[-2000:]}"
    for key, reason in not_run.items():
        print(f"not run: {key}: {reason}")
