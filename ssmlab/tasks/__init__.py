"""Tasks: data generators and loaders, registered by name."""

from __future__ import annotations

from ssmlab import registry
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task
from ssmlab.tasks.lra import ListOps, Pathfinder, PathX
from ssmlab.tasks.synthetic import MQAR, Copying, InductionHeads, SelectiveCopying


def create_task(name: str, **options) -> Task:
    """Build the registered task ``name``; unknown options are an error."""
    cls = registry.get("task", name).obj
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {exc}") from exc


__all__ = ["IGNORE_INDEX", "MQAR", "Copying", "InductionHeads", "ListOps", "PathX", "Pathfinder",
           "SelectiveCopying", "Split", "Task", "create_task"]
