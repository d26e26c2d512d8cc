"""Distributed data parallel with two CPU processes (gloo) through torchrun."""

import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

SCRIPT = textwrap.dedent("""
    import sys, torch
    import ssmlab
    from ssmlab.tasks import create_task
    from ssmlab.train import TrainConfig, train
    from ssmlab.train import distributed

    task = create_task("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2, n_train=64, n_test=16)
    torch.manual_seed(0)
    model = ssmlab.create_model("attention", head="lm", d_model=16, n_layers=1, **task.model_options())
    result = train(model, task, TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, progress=False,
                                            checkpoint_dir=sys.argv[2], keep_checkpoint=True))
    if distributed.rank() == 0:
        torch.save({"params": [p.detach() for p in model.parameters()], "metrics": result.metrics}, sys.argv[1])
""")


def _torchrun():
    exe = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), str(tmp_path / "ck1")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2", str(script),
                             str(tmp_path / "two.pt"), str(tmp_path / "ck2")],
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for a, b in zip(one["params"], two["params"]):
        assert (a - b).abs().max() < 1e-5  # DDP averages the two halves' gradients: the same update
    assert one["metrics"] == pytest.approx(two["metrics"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "ck2").iterdir()) == ["checkpoint.pt"]  # rank 0 alone wrote it


def test_cli_train_under_torchrun_records_one_run(tmp_path):
    proc = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "ssmlab.cli", "train",
                           "attention", "mqar", "--steps", "4", "--batch-size", "8", "--d-model", "16",
                           "--n-layers", "1", "--task-option", "n_train=64", "--task-option", "n_test=16",
                           "--store", str(tmp_path / "r.sqlite"), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run 1: attention on mqar") == 1
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("SELECT model, status FROM runs").fetchall() == [("attention", "finished")]
