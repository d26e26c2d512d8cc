"""Leaderboard tables: one row per model, one column per task, mean and std over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict

from ssmlab.store import ResultStore


def leaderboard(store: ResultStore, *, suite: str | None = None, metric: str = "test_accuracy") -> dict:
    """Aggregate finished runs: ``{"tasks": [...], "rows": [{"model", "cells": {task: (mean, std, n)}, ...}]}``."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    params: dict[str, dict[str, int]] = defaultdict(dict)  # model -> task -> parameters (heads differ by task)
    seconds: dict[str, list[float]] = defaultdict(list)
    for run in store.runs(suite=suite):
        value = (run["metrics"] or {}).get(metric)
        if value is None:
            continue
        cells[run["model"]][run["task"]].append(value)
        params[run["model"]][run["task"]] = run["n_params"]
        seconds[run["model"]].append(run["wall_time_s"])
    tasks = sorted({t for per_task in cells.values() for t in per_task})
    rows = []
    for model in sorted(cells):
        counts = sorted(set(params[model].values()))
        row = {"model": model, "n_params": counts[-1], "task_params": dict(params[model]),
               "params_text": f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}",
               "wall_time_s": sum(seconds[model]), "cells": {}}
        for task in tasks:
            values = cells[model].get(task)
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row["cells"][task] = (statistics.fmean(values), std, len(values))
        rows.append(row)
    return {"metric": metric, "tasks": tasks, "rows": rows}


def format_table(board: dict) -> str:
    """Plain-text table; the best mean of each column is marked with ``*``."""
    tasks = board["tasks"]
    best = {t: max((r["cells"][t][0] for r in board["rows"] if t in r["cells"]), default=None) for t in tasks}
    header = ["model", *tasks, "params", "time (s)"]
    lines = []
    for r in board["rows"]:
        line = [r["model"]]
        for t in tasks:
            if t not in r["cells"]:
                line.append("-")
                continue
            mean, std, n = r["cells"][t]
            text = f"{mean:.3f}" + (f" ± {std:.3f}" if n > 1 else "")
            line.append(text + (" *" if mean == best[t] else ""))
        line += [r["params_text"], f"{r['wall_time_s']:.1f}"]
        lines.append(line)
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    out = [f"metric: {board['metric']} (mean over seeds; * best per column)", fmt(header),
           "  ".join("-" * w for w in widths)]
    return "\n".join(out + [fmt(row) for row in lines])
