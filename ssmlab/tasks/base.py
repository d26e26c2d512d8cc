"""The task interface: a named data source with a split, a head and a metric."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Inputs and targets of one split. For token-level tasks ``targets`` is (N, L) with
    ``IGNORE_INDEX`` where no loss is taken; for sequence-level tasks it is (N,).

    ``lengths`` (N,), when given, marks ``inputs`` as right-padded: row ``i`` holds
    ``lengths[i]`` real tokens and the rest is padding (token 0). It is what
    ``SequenceClassifier.forward(inputs, lengths)`` takes.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]


class Task:
    """Base class of tasks.

    Subclasses set ``head`` (the model head the task needs: ``"lm"`` or
    ``"classify"``), ``metric`` and ``seq_len``, and implement ``_generate(split, n, generator)``.

    ``metric`` names the metric the task is ranked by (one of the names the trainer's
    evaluation returns; runs store it as ``test_<metric>``) and ``lower_is_better`` its
    direction: these two attributes are the one place that says how a task is scored, and
    early stopping, ``ssmlab run`` and the report all read them (see :func:`task_metric`).
    Optional reference levels for reports: ``chance`` (the metric of a uniform guess, or
    None; may be a property of the options) and ``published``, a dict from a mixer name to
    ``(value, source)``: a figure a paper reports for that model on this task.
    Data are deterministic in ``seed``: the same seed and options give the same tensors.
    Tasks whose generation is slow at full size set ``cached = True``: their splits are
    stored on disk (see ``ssmlab.tasks.cache``) and read back on the next call.

    Options common to every task: ``seed`` (0), ``n_train`` (2048), ``n_val`` (256), ``n_test`` (256).
    """

    head: str = "lm"
    metric: str = "accuracy"
    lower_is_better: bool = False
    chance: float | None = None
    published: dict[str, tuple[float, str]] = {}
    registry_name: str = "task"
    cached: bool = False

    def __new__(cls, *args, **kwargs):
        # Record the options as given, so that options() can rebuild the task and key its cache.
        task = super().__new__(cls)
        task._given_options = dict(kwargs)
        return task

    def __init__(self, *, seed: int = 0, n_train: int = 2048, n_val: int = 256, n_test: int = 256):
        if n_train < 1 or n_val < 1 or n_test < 1:
            raise ValueError(f"n_train, n_val and n_test must be positive, got {n_train}, {n_val}, {n_test}")
        self.seed, self.n_train, self.n_val, self.n_test = seed, n_train, n_val, n_test

    def options(self) -> dict:
        """Every option of this task, defaults included: ``create_task(name, **task.options())`` rebuilds it."""
        resolved = {}
        # Base classes first, so that a subclass's default (ListOps' n_train, say) wins.
        for klass in reversed(type(self).__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
                    resolved[p.name] = p.default
        resolved.update(getattr(self, "_given_options", {}))
        return resolved

    def model_options(self) -> dict:
        """Options the model head needs for this task (vocab_size, n_classes, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement model_options")

    def split(self, name: str) -> Split:
        """The split ``name`` ("train", "val" or "test"), generated or read from the cache."""
        sizes = {"train": self.n_train, "val": self.n_val, "test": self.n_test}
        if name not in sizes:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        if self.cached:
            # Imported here because the cache module needs Split from this one.
            from ssmlab.tasks.cache import load_or_generate

            return load_or_generate(self, name, sizes[name], lambda: self._generate_split(name, sizes[name]))
        return self._generate_split(name, sizes[name])

    def _generate_split(self, name: str, n: int) -> Split:
        # Each split has its own stream so that changing n_train leaves the test split unchanged;
        # "val" came later and took the next stream, leaving train and test as they were.
        stream = {"train": 1, "test": 2, "val": 3}[name]
        generator = torch.Generator().manual_seed(self.seed * 1000 + stream)
        return self._generate(name, n, generator)

    def _generate(self, split: str, n: int, generator: torch.Generator) -> Split:
        raise NotImplementedError(f"{type(self).__name__} must implement _generate")


def task_metric(name: str) -> tuple[str, bool]:
    """The metric of the registered task ``name`` and whether lower is better, e.g. ``("mse", True)``."""
    from ssmlab import registry

    cls = registry.get("task", name).obj
    return cls.metric, cls.lower_is_better
