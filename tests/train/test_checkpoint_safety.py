"""Checkpoints load weights only and carry a checksum: a planted pickle never runs, a corrupted file is an error."""

import zipfile

import pytest

from ssmlab.train import TrainConfig, checkpoint, train
from ssmlab.train.checkpoint import CheckpointError
from tests.train.helpers import Killed, interrupt_after_checkpoint, model, mqar


class _Payload:
    """Unpickling this creates the file ``flag``: what an attacker's checkpoint would do."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        return exec, (f"open({self.flag!r}, 'w').close()",)


def _config(directory, **kw):
    return TrainConfig(steps=4, batch_size=8, progress=False, checkpoint_dir=str(directory), **kw)


def test_a_planted_pickle_does_not_run_and_is_a_one_line_error(tmp_path):
    import torch

    flag = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    task = mqar()
    torch.save({"model_fingerprint": checkpoint.model_fingerprint(model(task)), "run_fingerprint": {},
                "payload": _Payload(flag)}, run / checkpoint.FILE)
    with pytest.raises(CheckpointError) as info:
        train(model(task), task, _config(run))
    assert not flag.exists(), "loading the checkpoint ran the pickled payload"
    message = str(info.value)
    assert "\n" not in message and str(run / checkpoint.FILE) in message and "not a weights-only" in message


def _tensor_record(path):
    """(offset, size) of the largest tensor's bytes inside the checkpoint's zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_bytes_in_the_tensor_data_are_an_error(tmp_path, monkeypatch):
    task = mqar()
    interrupt_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(model(task), task, _config(tmp_path, checkpoint_every=2))
    path = tmp_path / checkpoint.FILE
    offset, size = _tensor_record(path)
    data = bytearray(path.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 8):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted") as info:
        train(model(task), task, _config(tmp_path, checkpoint_every=2))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_checkpoint_holds_only_tensors_and_plain_values(tmp_path, monkeypatch):
    """Every random state survives the weights-only round trip: resuming equals never stopping."""
    import torch

    task = mqar()
    expected = train(model(task, "s4d", dropout=0.1), task, _config(tmp_path / "a", seed=3))
    interrupt_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(model(task, "s4d", dropout=0.1), task, _config(tmp_path / "b", seed=3, checkpoint_every=2))
    torch.load(tmp_path / "b" / checkpoint.FILE, weights_only=True)
    resumed = train(model(task, "s4d", dropout=0.1), task, _config(tmp_path / "b", seed=3, checkpoint_every=2))
    assert resumed.metrics == expected.metrics
