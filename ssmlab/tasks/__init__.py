"""Tasks: data generators and loaders, registered by name."""

from __future__ import annotations

from ssmlab import registry
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task
from ssmlab.tasks.audio import SpokenDigits
from ssmlab.tasks.images import MNIST2D, FashionMNIST2D, LRAImage
from ssmlab.tasks.lra import ListOps, Pathfinder, PathX
from ssmlab.tasks.sources import MissingSourceError, missing_source
from ssmlab.tasks.synthetic import MQAR, Copying, InductionHeads, SelectiveCopying
from ssmlab.tasks.text import EnwikGensim, LRARetrieval, LRAText, ShakespeareChar
from ssmlab.tasks.timeseries import AirlineForecast, CO2Forecast, Forecasting, SunspotsForecast, UCRClassification


def create_task(name: str, **options) -> Task:
    """Build the registered task ``name``; unknown options are an error."""
    cls = registry.get("task", name).obj
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {exc}") from exc


__all__ = ["IGNORE_INDEX", "MNIST2D", "MQAR", "AirlineForecast", "CO2Forecast", "Copying", "EnwikGensim",
           "FashionMNIST2D", "Forecasting", "InductionHeads", "LRAImage", "LRARetrieval", "LRAText", "ListOps",
           "MissingSourceError", "PathX", "Pathfinder", "SelectiveCopying", "ShakespeareChar", "Split",
           "SpokenDigits", "SunspotsForecast", "Task", "UCRClassification", "create_task", "missing_source"]
