import hashlib

import pytest
import torch

import ssmlab
from ssmlab.tasks import IGNORE_INDEX, create_task


def digest(split):
    return hashlib.sha256(split.inputs.numpy().tobytes() + split.targets.numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("name", ssmlab.list_tasks())
def test_deterministic_in_seed(name):
    a = create_task(name, seed=3, n_train=64, n_test=16)
    b = create_task(name, seed=3, n_train=64, n_test=16)
    c = create_task(name, seed=4, n_train=64, n_test=16)
    for split in ("train", "test"):
        assert digest(a.split(split)) == digest(b.split(split))
        assert digest(a.split(split)) != digest(c.split(split))
    assert digest(a.split("train")) != digest(a.split("test"))


def test_mqar_structure():
    task = create_task("mqar", vocab_size=32, seq_len=40, num_kv_pairs=5, n_train=50)
    s = task.split("train")
    assert s.inputs.shape == s.targets.shape == (50, 40)
    for x, y in zip(s.inputs, s.targets):
        keys, values = x[0:10:2], x[1:10:2]
        assert len(set(keys.tolist())) == 5 and (keys < 16).all() and (values >= 16).all()
        pairs = dict(zip(keys.tolist(), values.tolist()))
        queries = (y != IGNORE_INDEX).nonzero().flatten()
        assert len(queries) == 5 and (queries >= 10).all()
        for q in queries:
            assert y[q].item() == pairs[x[q].item()]


def test_selective_copying_structure():
    task = create_task("selective-copying", vocab_size=10, seq_len=20, num_tokens=4, n_train=30)
    s = task.split("train")
    assert s.inputs.shape == (30, 24)
    for x, y in zip(s.inputs, s.targets):
        data = x[:20][x[:20] != 0]
        assert len(data) == 4 and (data >= 2).all()
        assert (x[20:] == 1).all()
        assert torch.equal(y[20:], data) and (y[:20] == IGNORE_INDEX).all()


def test_bad_task_options():
    with pytest.raises(ValueError, match="num_kv_pairs"):
        create_task("mqar", vocab_size=16, num_kv_pairs=9)
    with pytest.raises(ValueError, match="seq_len"):
        create_task("mqar", seq_len=10, num_kv_pairs=8)
    with pytest.raises(ValueError, match="bad options"):
        create_task("mqar", colour="red")
    with pytest.raises(ValueError, match="split"):
        create_task("mqar").split("validation")
