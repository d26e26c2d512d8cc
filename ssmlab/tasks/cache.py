"""On-disk cache of generated data sets.

Generating ListOps or Pathfinder at full size takes minutes, so a task with
``cached = True`` stores each split it generates in one file and reads it back
the next time. The cache lives in one directory: ``$SSMLAB_CACHE`` if set, else
``~/.cache/ssmlab``; task data go under its ``tasks/`` folder.

A file is keyed by a hash of (task name, the options that shape the data, seed,
split, number of examples, format version, the task's ``data_version``), so
changing any of them makes a new file and never returns stale data. A task bumps
its ``data_version`` (1 when it declares none) whenever its generator changes, so
that files its older generator wrote are not read back. Files are written to a temporary name and
moved into place with ``os.replace``, so a run killed half way leaves no partial
file under the real name; a file that cannot be read back, or whose stored key
differs, is regenerated and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from ssmlab.tasks.base import Split

# Bump when the file layout or a generator changes in a way the options do not capture.
FORMAT_VERSION = 1

# The split sizes are keyed through ``n`` of the split itself, so that changing n_train
# reuses the cached test split.
_SIZE_OPTIONS = ("n_train", "n_val", "n_test", "seed")


def cache_dir() -> Path:
    """The cache directory: ``$SSMLAB_CACHE``, else ``~/.cache/ssmlab``."""
    root = os.environ.get("SSMLAB_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ssmlab"


def cache_key(task, split: str, n: int) -> dict:
    """Everything that determines the data of one split, as a JSON-able dict."""
    options = {k: v for k, v in sorted(task.options().items()) if k not in _SIZE_OPTIONS}
    return {"task": task.registry_name, "options": options, "seed": task.seed, "split": split, "n": n,
            "version": FORMAT_VERSION, "data_version": getattr(task, "data_version", 1)}


def cache_path(task, split: str, n: int) -> Path:
    """The file that holds (or will hold) split ``split`` of ``task`` with ``n`` examples."""
    key = cache_key(task, split, n)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "tasks" / f"{task.registry_name}-{split}-{digest}.pt"


def _compact(t: torch.Tensor) -> torch.Tensor:
    # Token ids are stored as int64 in memory but mostly fit a byte: Path-X shrinks 8x on disk.
    if t.dtype == torch.long and t.numel():
        lo, hi = int(t.min()), int(t.max())
        for small in (torch.uint8, torch.int16, torch.int32):
            info = torch.iinfo(small)
            if info.min <= lo and hi <= info.max:
                return t.to(small)
    return t


def _save(path: Path, key: dict, split: Split) -> None:
    payload = {"key": json.dumps(key, sort_keys=True)}
    for field in ("inputs", "targets", "lengths"):
        value = getattr(split, field)
        if value is not None:
            payload[field] = _compact(value)
            payload[field + "_dtype"] = str(value.dtype).removeprefix("torch.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, key: dict, n: int) -> Split:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("key") != json.dumps(key, sort_keys=True):
        raise ValueError("stored key differs")
    fields = {}
    for field in ("inputs", "targets", "lengths"):
        if field in payload:
            fields[field] = payload[field].to(getattr(torch, payload[field + "_dtype"]))
    split = Split(**fields)
    if len(split) != n or split.targets.shape[0] != n:
        raise ValueError(f"stored split has {len(split)} examples, expected {n}")
    return split


def load_or_generate(task, split: str, n: int, generate: Callable[[], Split]) -> Split:
    """Split ``split`` of ``task`` from the cache, or ``generate()`` it and store it."""
    path = cache_path(task, split, n)
    key = cache_key(task, split, n)
    if path.exists():
        try:
            return _load(path, key, n)
        except Exception as exc:  # a truncated or foreign file: regenerate rather than fail
            warnings.warn(f"ssmlab: regenerating unreadable cache file {path} ({type(exc).__name__}: {exc})",
                          stacklevel=2)
    data = generate()
    try:
        _save(path, key, data)
    except OSError as exc:
        # A read-only or full disk costs the next run time, not this run its data.
        warnings.warn(f"ssmlab: could not write cache file {path}: {exc}", stacklevel=2)
    return data
