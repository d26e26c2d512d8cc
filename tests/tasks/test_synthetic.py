import hashlib

import pytest
import torch

import ssmlab
from ssmlab.tasks import IGNORE_INDEX, create_task, missing_source


def digest(split):
    return hashlib.sha256(split.inputs.numpy().tobytes() + split.targets.numpy().tobytes()).hexdigest()


def create_or_skip(name, **options):
    # Real data sets are read from packages; without the package the test says what to install.
    task = create_task(name, **options)
    reason = missing_source(task)
    if reason:
        pytest.skip(reason)
    return task


@pytest.mark.parametrize("name", ssmlab.list_tasks())
def test_deterministic_in_seed(name):
    # 32 training examples: the smallest real data sets (ArrowHead, BasicMotions) have 36 after validation.
    # For a fixed data set the seed chooses the subsample, so the splits still differ between seeds.
    a = create_or_skip(name, seed=3, n_train=32, n_test=16)
    b = create_task(name, seed=3, n_train=32, n_test=16)
    c = create_task(name, seed=4, n_train=32, n_test=16)
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


def test_mqar_values_never_repeat_and_zero_is_never_a_key():
    # Zoology's multiquery_ar draws keys from [1, V/2) and values from [V/2, V), both without replacement.
    task = create_task("mqar", vocab_size=16, seq_len=32, num_kv_pairs=7, n_train=200, seed=3)
    s = task.split("train")
    keys, values = s.inputs[:, 0:14:2], s.inputs[:, 1:14:2]  # (200, 7)
    assert ((keys >= 1) & (keys < 8)).all() and ((values >= 8) & (values < 16)).all()
    for row_keys, row_values in zip(keys, values):
        assert len(set(row_keys.tolist())) == 7 and len(set(row_values.tolist())) == 7
    queries = s.targets != IGNORE_INDEX
    assert (queries.sum(1) == 7).all() and (s.inputs[queries] != 0).all()
    with pytest.raises(ValueError, match=r"num_kv_pairs must be in \[1, 7\]"):
        create_task("mqar", vocab_size=16, seq_len=32, num_kv_pairs=8)


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


@pytest.mark.parametrize("name", ssmlab.list_tasks())
def test_val_split_is_its_own_stream(name):
    task = create_or_skip(name, seed=3, n_train=8, n_val=5, n_test=8)
    val = task.split("val")
    assert len(val) == 5
    assert digest(val) != digest(task.split("train")) and digest(val) != digest(task.split("test"))
    assert digest(val) == digest(create_task(name, seed=3, n_train=8, n_val=5, n_test=8).split("val"))


def test_train_and_test_streams_unchanged():
    # Adding the val split must not move the train and test data of existing seeds.
    s = create_task("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2, n_train=4, n_test=4, seed=1)
    generator = torch.Generator().manual_seed(1001)
    assert torch.equal(s.split("train").inputs, s._generate("train", 4, generator).inputs)
    generator = torch.Generator().manual_seed(1002)
    assert torch.equal(s.split("test").inputs, s._generate("test", 4, generator).inputs)


@pytest.mark.parametrize("name", ssmlab.list_tasks())
def test_options_rebuild_the_task(name):
    task = create_task(name, seed=5, n_train=4, n_test=4)
    options = task.options()
    assert options["seed"] == 5 and options["n_train"] == 4
    assert create_task(name, **options).options() == options


def test_copying_structure():
    task = create_task("copying", vocab_size=6, num_tokens=5, delay=7, n_train=40)
    s = task.split("train")
    assert task.seq_len == 2 * 5 + 7 + 1 and s.inputs.shape == s.targets.shape == (40, 18)
    for x, y in zip(s.inputs, s.targets):
        data = x[:5]
        assert ((data >= 1) & (data <= 4)).all()
        assert (x[5:12] == 0).all() and x[12] == 5 and (x[13:] == 0).all()
        assert torch.equal(y[13:], data) and (y[:13] == IGNORE_INDEX).all()


@pytest.mark.parametrize("delay", [0, 1, 63])
def test_copying_any_delay(delay):
    s = create_task("copying", num_tokens=3, delay=delay, n_train=4).split("train")
    assert s.inputs.shape == (4, delay + 7) and (s.targets != IGNORE_INDEX).sum(1).eq(3).all()


def test_induction_heads_structure():
    task = create_task("induction-heads", vocab_size=8, seq_len=12, n_train=200)
    s = task.split("train")
    assert s.inputs.shape == s.targets.shape == (200, 12)
    positions = []
    for x, y in zip(s.inputs, s.targets):
        triggers = (x == 0).nonzero().flatten().tolist()
        assert len(triggers) == 2 and triggers[1] == 11 and triggers[0] <= 9
        assert (y[:-1] == IGNORE_INDEX).all() and y[-1] == x[triggers[0] + 1] and y[-1] != 0
        positions.append(triggers[0])
    # The trigger's first position ranges over all allowed places.
    assert set(positions) == set(range(10))


@pytest.mark.parametrize("seq_len", [3, 4, 65])
def test_induction_heads_any_length(seq_len):
    s = create_task("induction-heads", seq_len=seq_len, n_train=16).split("train")
    assert s.inputs.shape == (16, seq_len) and (s.inputs[:, -1] == 0).all()


def test_mqar_recall_capacity_options():
    s = create_task("mqar", vocab_size=256, seq_len=256, num_kv_pairs=64, n_train=4).split("train")
    assert ((s.targets != IGNORE_INDEX).sum(1) == 64).all()


def test_bad_probe_options():
    with pytest.raises(ValueError, match="copying: vocab_size"):
        create_task("copying", vocab_size=2)
    with pytest.raises(ValueError, match="copying: delay"):
        create_task("copying", delay=-1)
    with pytest.raises(ValueError, match="copying: num_tokens"):
        create_task("copying", num_tokens=0)
    with pytest.raises(ValueError, match="induction-heads: seq_len"):
        create_task("induction-heads", seq_len=2)
    with pytest.raises(ValueError, match="induction-heads: vocab_size"):
        create_task("induction-heads", vocab_size=1)
    with pytest.raises(ValueError, match="n_val"):
        create_task("copying", n_val=0)
