"""`ssmlab train ... --save DIR` then `ssmlab generate --checkpoint DIR`: fresh processes, streaming, sampling flags."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ssmlab
from ssmlab.cli import main
from ssmlab.models.heads import LanguageModel
from ssmlab.tasks import create_task, missing_source

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"^(\d+) tokens in [0-9.]+s: [0-9.]+ tokens/s$")


def _ssmlab(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ssmlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("mixer", ["hyena", "mamba,attention", "mamba2"])
def test_train_save_then_generate_in_fresh_processes(mixer, tmp_path):
    missing = missing_source(create_task("shakespeare-char"))
    if missing:
        pytest.skip(f"shakespeare-char's source is missing: {missing}")
    trained = _ssmlab("train", mixer, "shakespeare-char", "--steps", "3", "--save", "out/", "--no-progress",
                      "--batch-size", "4", "--task-option", "seq_len=32", "--task-option", "n_train=64",
                      "--task-option", "n_val=4", "--task-option", "n_test=4", "--store", "results.sqlite",
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    generated = _ssmlab("generate", "--checkpoint", "out/", "--prompt", "ROMEO:", "--max-new-tokens", "10",
                        "--temperature", "0", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert RATE.match(generated.stderr.strip().splitlines()[-1]).group(1) == "10"
    model = ssmlab.load_pretrained(tmp_path / "out")
    assert model.config["mixer"] == (mixer if "," not in mixer else mixer.split(","))
    want = model.generate(torch.tensor([list(b"ROMEO:")]), 10, temperature=0)[0].tolist()
    assert generated.stdout == bytes(want).decode("utf-8", errors="replace") + "\n"


def _saved(tmp_path, mixer="s4d", task="shakespeare-char", vocab_size=256):
    torch.manual_seed(0)
    model = ssmlab.create_model(mixer, d_model=16, n_layers=1, vocab_size=vocab_size)
    with torch.no_grad():
        model.encoder.embed.weight.mul_(0.05)  # a spread-out next-token distribution, so that sampling varies
    model.save_pretrained(tmp_path, task=task)
    return model


def _generate(path, *args):
    return main(["generate", "--checkpoint", str(path), "--prompt", "ROMEO:", "--max-new-tokens", "12", *args])


def test_sampling_options(tmp_path, capsys):
    model = _saved(tmp_path)
    outputs = {}
    for name, args in {"seed1": ["--seed", "1"], "seed1-again": ["--seed", "1"], "seed2": ["--seed", "2"],
                       "greedy": ["--temperature", "0"], "top1": ["--top-k", "1", "--seed", "5"],
                       "tiny-nucleus": ["--top-p", "1e-6", "--seed", "6"],
                       "filtered": ["--temperature", "0.7", "--top-k", "5", "--top-p", "0.9"]}.items():
        assert _generate(tmp_path, *args) == 0
        captured = capsys.readouterr()
        outputs[name] = captured.out
        assert RATE.match(captured.err.strip()).group(1) == "12"
    assert outputs["seed1"] == outputs["seed1-again"] != outputs["seed2"]
    assert outputs["greedy"] == outputs["top1"] == outputs["tiny-nucleus"]
    want = model.generate(torch.tensor([list(b"ROMEO:")]), 12, temperature=0)[0].tolist()
    assert outputs["greedy"] == bytes(want).decode("utf-8", errors="replace") + "\n"
    assert all(out.startswith("ROMEO:") for out in outputs.values())


def test_tokens_are_printed_as_they_are_made(tmp_path, capsys, monkeypatch):
    _saved(tmp_path, mixer="mamba", task="mqar", vocab_size=128)  # id tokens: each prints as " <id>"
    printed_before_step = []
    step = LanguageModel.step

    def recording_step(self, token_ids, states):
        printed_before_step.append(capsys.readouterr().out)
        return step(self, token_ids, states)

    monkeypatch.setattr(LanguageModel, "step", recording_step)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "3 17 5", "--max-new-tokens", "6"]) == 0
    printed_before_step.append(capsys.readouterr().out)
    # Before each step, the token it consumes was already on stdout (after the prompt, for the first).
    assert len(printed_before_step) == 6
    assert re.fullmatch(r"3 17 5 \d+", printed_before_step[0])
    assert all(re.fullmatch(r" \d+", piece) for piece in printed_before_step[1:-1])
    assert re.fullmatch(r" \d+\n", printed_before_step[-1])


def test_multibyte_characters_are_held_back_until_complete():
    from ssmlab.interop.tokenization import Tokenizer

    stream = Tokenizer("bytes").stream(list("é".encode()))
    assert stream.start() == "é"
    pieces = [stream.push(b) for b in "ñx".encode()]
    assert pieces == ["", "ñ", "x"]
    assert stream.push(0xE2) == "" and stream.end() == "\ufffd"


def test_task_without_text_takes_token_ids(tmp_path, capsys):
    model = _saved(tmp_path, task="mqar", vocab_size=128)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "3 17 5", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    want = model.generate(torch.tensor([[3, 17, 5]]), 4, temperature=0)[0].tolist()
    assert capsys.readouterr().out == " ".join(map(str, want)) + "\n"
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "ROMEO:"]) == 1
    assert "give the prompt as integers" in capsys.readouterr().err


def test_generate_refuses_models_that_cannot(tmp_path, capsys):
    ssmlab.create_model("s4d", head="classify", d_model=8, n_layers=1, vocab_size=5, n_classes=2).save_pretrained(
        tmp_path / "c")
    assert main(["generate", "--checkpoint", str(tmp_path / "c"), "--prompt", "1"]) == 1
    assert "needs a language model" in capsys.readouterr().err
    ssmlab.create_model("bi-mamba", d_model=8, n_layers=1, vocab_size=300).save_pretrained(tmp_path / "b")
    assert main(["generate", "--checkpoint", str(tmp_path / "b"), "--prompt", "x"]) == 1
    assert "bidirectional" in capsys.readouterr().err
