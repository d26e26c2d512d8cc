"""Tasks: data generators and loaders, registered by name.

Every module of this package is imported here, so a task file registers itself; each
registered task class is exported by its class name (``ssmlab.tasks.MQAR``).
"""

from __future__ import annotations

from ssmlab import registry
from ssmlab.config import check_options, constructor_options
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task
from ssmlab.tasks.sources import MissingSourceError, missing_source
from ssmlab.tasks.timeseries import Forecasting, UCRClassification

_TASK_CLASSES = registry.import_submodules(__name__)
globals().update(_TASK_CLASSES)


def create_task(name: str, **options) -> Task:
    """Build the registered task ``name``; an unknown option is a ``ConfigError`` listing the valid ones."""
    cls = registry.get("task", name).obj
    check_options(options, constructor_options(cls), f"task {name!r}", types=False)
    return cls(**options)


__all__ = ["IGNORE_INDEX", "Forecasting", "MissingSourceError", "Split", "Task", "UCRClassification", "create_task",
           "missing_source", *sorted(_TASK_CLASSES)]
