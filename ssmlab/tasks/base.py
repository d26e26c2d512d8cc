"""The task interface: a named data source with a split, a head and a metric."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Split:
    """Inputs and targets of one split. For token-level tasks ``targets`` is (N, L) with
    ``IGNORE_INDEX`` where no loss is taken; for sequence-level tasks it is (N,)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


class Task:
    """Base class of tasks.

    Subclasses set ``head`` (the model head the task needs: ``"lm"`` or
    ``"classify"``), ``metric`` and ``seq_len``, and implement ``_generate(split, n, generator)``.
    Data are deterministic in ``seed``: the same seed and options give the same tensors.
    """

    head: str = "lm"
    metric: str = "accuracy"
    registry_name: str = "task"

    def __init__(self, *, seed: int = 0, n_train: int = 2048, n_test: int = 256):
        if n_train < 1 or n_test < 1:
            raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
        self.seed, self.n_train, self.n_test = seed, n_train, n_test

    def model_options(self) -> dict:
        """Options the model head needs for this task (vocab_size, n_classes, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement model_options")

    def split(self, name: str) -> Split:
        sizes = {"train": self.n_train, "test": self.n_test}
        if name not in sizes:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(sizes)}")
        # Each split has its own stream so that changing n_train leaves the test split unchanged.
        generator = torch.Generator().manual_seed(self.seed * 1000 + (1 if name == "train" else 2))
        return self._generate(name, sizes[name], generator)

    def _generate(self, split: str, n: int, generator: torch.Generator) -> Split:
        raise NotImplementedError(f"{type(self).__name__} must implement _generate")
