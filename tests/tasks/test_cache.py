import hashlib
import os
from pathlib import Path

import pytest
import torch

from ssmlab.tasks import create_task
from ssmlab.tasks import cache as task_cache
from ssmlab.tasks.lra import ListOps, Pathfinder

SMALL = dict(max_depth=4, max_args=3, min_length=8, max_length=40, n_train=32, n_val=8, n_test=8)


def digest(split):
    parts = [split.inputs, split.targets] + ([split.lengths] if split.lengths is not None else [])
    return hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts)).hexdigest()


def cached_files():
    return sorted((task_cache.cache_dir() / "tasks").glob("*"))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMLAB_CACHE", str(tmp_path / "here"))
    assert task_cache.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("SSMLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert task_cache.cache_dir() == tmp_path / "home" / ".cache" / "ssmlab"


def test_same_seed_same_data_across_runs(tmp_path, monkeypatch):
    first = digest(create_task("listops", seed=7, **SMALL).split("train"))
    assert len(cached_files()) == 1
    # A fresh cache directory forces a second generation from scratch.
    monkeypatch.setenv("SSMLAB_CACHE", str(tmp_path / "other"))
    assert digest(create_task("listops", seed=7, **SMALL).split("train")) == first
    assert digest(create_task("listops", seed=8, **SMALL).split("train")) != first


@pytest.mark.parametrize("name, options", [("listops", SMALL), ("pathfinder", dict(n_train=16, n_test=4))])
def test_second_load_comes_from_the_cache(name, options, monkeypatch):
    split = create_task(name, seed=1, **options).split("train")
    cls = {"listops": ListOps, "pathfinder": Pathfinder}[name]

    def refuse(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(cls, "_generate", refuse)
    again = create_task(name, seed=1, **options).split("train")
    assert digest(again) == digest(split)
    assert again.inputs.dtype == split.inputs.dtype == torch.long
    assert (again.lengths is None) == (split.lengths is None)


def test_corrupted_file_is_regenerated():
    split = create_task("listops", seed=2, **SMALL).split("test")
    (path,) = cached_files()
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="regenerating"):
        again = create_task("listops", seed=2, **SMALL).split("test")
    assert digest(again) == digest(split)
    # The file was rewritten and now reads back.
    assert digest(task_cache._load(path, task_cache.cache_key(create_task("listops", seed=2, **SMALL), "test", 8),
                                   8)) == digest(split)


def test_truncated_file_is_regenerated():
    split = create_task("listops", seed=2, **SMALL).split("val")
    (path,) = cached_files()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="regenerating"):
        assert digest(create_task("listops", seed=2, **SMALL).split("val")) == digest(split)


def test_key_covers_options_seed_split_and_size():
    task = create_task("listops", seed=3, **SMALL)
    base = task_cache.cache_path(task, "train", 32)
    assert base.parent == task_cache.cache_dir() / "tasks" and base.name.startswith("listops-train-")
    assert task_cache.cache_path(task, "test", 32) != base
    assert task_cache.cache_path(task, "train", 33) != base
    assert task_cache.cache_path(create_task("listops", seed=4, **SMALL), "train", 32) != base
    assert task_cache.cache_path(create_task("listops", seed=3, **{**SMALL, "max_args": 4}), "train", 32) != base
    # n_test does not shape the train split, so its file is shared.
    assert task_cache.cache_path(create_task("listops", seed=3, **{**SMALL, "n_test": 9}), "train", 32) == base
    assert task_cache.cache_path(create_task("path-x"), "train", 4) != task_cache.cache_path(
        create_task("pathfinder", resolution=128), "train", 4)


def test_interrupted_write_leaves_no_file(monkeypatch):
    def crash(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        create_task("listops", seed=5, **SMALL).split("train")
    assert cached_files() == []


def test_unwritable_cache_still_returns_data(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SSMLAB_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write"):
        split = create_task("listops", seed=5, **SMALL).split("train")
    assert len(split) == 32


def test_uncached_tasks_write_nothing():
    create_task("mqar", n_train=8, n_test=8).split("train")
    assert not Path(task_cache.cache_dir()).exists() or cached_files() == []
    assert os.environ["SSMLAB_CACHE"].endswith("cache")


def test_a_new_generator_version_is_a_new_file(monkeypatch):
    # Files that ListOps' previous generator wrote (trees of exactly min_length or max_length
    # tokens) must not be read back: the task's data_version is part of the key.
    task = create_task("listops", seed=7, **SMALL)
    before = task_cache.cache_path(task, "train", 32)
    monkeypatch.setattr(ListOps, "data_version", ListOps.data_version + 1)
    assert task_cache.cache_path(task, "train", 32) != before
    assert task_cache.cache_key(task, "train", 32)["data_version"] == ListOps.data_version
