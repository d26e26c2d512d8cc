"""A checkpoint belongs to one run of one store, is fingerprinted by everything that changes the result,
and is deleted when its run finishes (unless kept on request)."""

import pytest

from ssmlab.store import ResultStore
from ssmlab.train import TrainConfig, checkpoint, train
from ssmlab.train.checkpoint import CheckpointError
from ssmlab.train.sweep import RunSpec, execute
from tests.train.helpers import MQAR, Killed, interrupt_after_checkpoint, model, mqar, spy_on_resumes

SPEC = RunSpec("attention", "mqar", 0, dict(MQAR), {}, d_model=16, n_layers=1)
CONFIG = TrainConfig(steps=4, batch_size=8, progress=False, checkpoint_every=2)


def _checkpoints(root):
    return sorted(p for p in root.rglob("*") if p.name.startswith(checkpoint.FILE))


def _delete_store(path):
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def test_a_fresh_store_in_the_same_folder_never_resumes_another_stores_checkpoint(tmp_path, monkeypatch):
    db, root = tmp_path / "results.sqlite", tmp_path / "checkpoints"
    with ResultStore(db) as store:
        interrupt_after_checkpoint(monkeypatch, at_step=2)
        with pytest.raises(Killed):
            execute(SPEC, CONFIG, store, suite="s", checkpoint_root=root)
    assert _checkpoints(root), "the interrupted run left its checkpoint"
    _delete_store(db)
    resumes = spy_on_resumes(monkeypatch)
    with ResultStore(db) as store:
        execute(SPEC, CONFIG, store, suite="s", checkpoint_root=root)
        # The same store started again does resume its own interrupted run.
        interrupt_after_checkpoint(monkeypatch, at_step=2)
        with pytest.raises(Killed):
            execute(SPEC, CONFIG, store, suite="t", checkpoint_root=tmp_path / "other")
        execute(SPEC, CONFIG, store, suite="t", checkpoint_root=tmp_path / "other")
    assert resumes == [None, None, 2]


def test_identical_models_in_one_sweep_do_not_share_a_checkpoint(tmp_path, monkeypatch):
    """``models: [s4d, s4d]`` (the same run twice) and two labels of one mixer: each trains from the start."""
    resumes = spy_on_resumes(monkeypatch)
    labelled = [RunSpec(**{**SPEC.__dict__, "label": label}) for label in ("a", "b")]
    with ResultStore(tmp_path / "results.sqlite") as store:
        for spec in [SPEC, SPEC, *labelled]:
            execute(spec, CONFIG, store, suite="s", checkpoint_root=tmp_path / "checkpoints")
    assert resumes == [None, None, None, None]


def test_a_changed_setting_refuses_to_resume(tmp_path, monkeypatch):
    """``ssmlab train --checkpoint-dir``: a checkpoint written with other task options, model options,
    trainer settings, code or op backends is a clear one-line error naming what differs."""
    cfg = TrainConfig(steps=4, batch_size=8, progress=False, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    interrupt_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(model(mqar()), mqar(), cfg)
    changes = [
        (lambda: train(model(mqar(num_kv_pairs=4)), mqar(num_kv_pairs=4), cfg), "task_options.num_kv_pairs"),
        (lambda: train(model(mqar()), mqar(), TrainConfig(**{**cfg.__dict__, "grad_clip": 0.5})), "train.grad_clip"),
        (lambda: train(model(mqar()), mqar(), TrainConfig(**{**cfg.__dict__, "betas": (0.8, 0.9)})), "train.betas"),
        (lambda: train(model(mqar()), mqar(), TrainConfig(**{**cfg.__dict__, "eval_batch_size": 4})),
         "train.eval_batch_size"),
    ]
    for run, differs in changes:
        with pytest.raises(CheckpointError, match=differs.replace(".", r"\.")) as info:
            run()
        assert "\n" not in str(info.value)
    monkeypatch.setenv("SSMLAB_SCAN_BACKEND", "reference")
    with pytest.raises(CheckpointError, match="backends.SSMLAB_SCAN_BACKEND"):
        train(model(mqar()), mqar(), cfg)
    monkeypatch.delenv("SSMLAB_SCAN_BACKEND")
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: {"ssmlab": "0", "source_sha256": "edited"},
                        raising=False)
    with pytest.raises(CheckpointError, match="code.source_sha256"):
        train(model(mqar()), mqar(), cfg)


def test_a_changed_model_option_refuses_to_resume_through_the_sweep_spec(tmp_path, monkeypatch):
    """An option that leaves every shape alone (dropout) is part of the fingerprint too."""
    from ssmlab.train.sweep import train_spec

    cfg = TrainConfig(**{**CONFIG.__dict__, "checkpoint_dir": str(tmp_path)})
    interrupt_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train_spec(RunSpec(**{**SPEC.__dict__, "model_options": {"dropout": 0.0}}), cfg)
    with pytest.raises(CheckpointError, match="model_options"):
        train_spec(RunSpec(**{**SPEC.__dict__, "model_options": {"dropout": 0.1}}), cfg)


def test_a_sweep_starts_afresh_over_a_checkpoint_of_other_code(tmp_path, monkeypatch, capsys):
    resumes = spy_on_resumes(monkeypatch)
    with ResultStore(tmp_path / "results.sqlite") as store:
        interrupt_after_checkpoint(monkeypatch, at_step=2)
        with pytest.raises(Killed):
            execute(SPEC, CONFIG, store, suite="s", checkpoint_root=tmp_path / "checkpoints")
        monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: {"ssmlab": "0", "source_sha256": "edited"},
                        raising=False)
        execute(SPEC, CONFIG, store, suite="s", checkpoint_root=tmp_path / "checkpoints")
    assert resumes == [None, None]
    assert "code.source_sha256" in capsys.readouterr().err


def test_finished_runs_leave_no_checkpoint_unless_kept(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        execute(SPEC, CONFIG, store, suite="s", checkpoint_root=tmp_path / "checkpoints")
    assert _checkpoints(tmp_path / "checkpoints") == []
    task = mqar()
    train(model(task), task, TrainConfig(**{**CONFIG.__dict__, "checkpoint_dir": str(tmp_path / "a")}))
    assert _checkpoints(tmp_path / "a") == []
    train(model(task), task, TrainConfig(**{**CONFIG.__dict__, "checkpoint_dir": str(tmp_path / "b"),
                                            "keep_checkpoint": True}))
    assert [p.name for p in _checkpoints(tmp_path / "b")] == [checkpoint.FILE]


def test_checkpoint_directories_stay_inside_the_root(tmp_path, monkeypatch):
    """A model name such as ``../escape`` does not put checkpoints outside the checkpoint folder."""
    root = tmp_path / "store" / "checkpoints"
    with ResultStore(tmp_path / "store" / "results.sqlite") as store:
        interrupt_after_checkpoint(monkeypatch, at_step=2)
        with pytest.raises(Killed):
            execute(RunSpec(**{**SPEC.__dict__, "label": "../escape"}), CONFIG, store, suite="s", checkpoint_root=root)
    written = _checkpoints(tmp_path)
    assert written and all(root.resolve() in p.resolve().parents for p in written)


def test_one_run_started_twice_at_once_does_not_share_its_checkpoint_directory(tmp_path):
    """While a process trains in a checkpoint directory (here: this test holds its lock), another fails."""
    fcntl = pytest.importorskip("fcntl")

    task = mqar()
    with open(tmp_path / "checkpoint.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CheckpointError, match="in use by another training process"):
            train(model(task), task, TrainConfig(**{**CONFIG.__dict__, "checkpoint_dir": str(tmp_path)}))
    train(model(task), task, TrainConfig(**{**CONFIG.__dict__, "checkpoint_dir": str(tmp_path)}))
    assert list(tmp_path.iterdir()) == []
