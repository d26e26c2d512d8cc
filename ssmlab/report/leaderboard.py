"""Leaderboard tables: one row per model configuration, one column per task configuration.

Each task is scored by the metric it declares (``Task.metric``, stored by the trainer as
``test_<metric>``) in its declared direction (``Task.lower_is_better``), read from the task
registry: nothing here guesses a direction from a metric's name.

A cell is the mean, standard deviation and count of the runs whose recorded configurations
are identical apart from their seed. Runs that differ in anything else (model or task
options, trainer settings, or two sweeps of one suite with different settings) are never
averaged together: they are separate rows (a difference in the model or the trainer) or
separate columns (a difference in the task's options or its own trainer settings), each
labelled by what sets it apart.

Runs that are trials of one learning-rate sweep (their config records ``run.lr_grid``, the grid,
and ``run.train_options.lr``, the trial's value; see :mod:`ssmlab.experiment`) share a cell: the
cell is the test metric of the learning rate whose mean validation metric (``val_<metric>``)
over the seeds is best in the task's direction, ties going to the lower mean validation loss and
then to the smaller learning rate. The test split never takes part in the choice. Every trial
stays in the store; :func:`leaderboard` returns them all, with the chosen one marked. A row
matched to a parameter budget (``run.param_budget``) is named by the budget, not by the width
it gave on each task.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict

from ssmlab import registry
from ssmlab.store import ResultStore

# Configuration keys (dotted paths into a run's recorded config) that belong to the task's column.
_TASK_KEYS = ("run.task", "run.task_options", "run.train_options", "run.lr_grid")
# Keys that name the run rather than configure it: the seed varies within a cell, the label is the row's name.
_IGNORED = ("seed", "label")
# Keys that vary within a cell when the run says so: a sweep's trial learning rate, a budget's width.
_SWEPT = {"run.train_options.lr": "run.lr_grid", "run.d_model": "run.param_budget"}


def task_info(name: str, options: dict | None = None) -> dict | None:
    """What the registered task ``name`` declares: ``{"metric", "lower_is_better", "chance", "published"}``;
    None when no task of that name is registered. ``chance`` is computed for ``options`` when the
    task derives it from them."""
    try:
        cls = registry.get("task", name).obj
    except KeyError:
        return None
    chance = cls.__dict__.get("chance", getattr(cls, "chance", None))
    if isinstance(chance, property):
        from ssmlab.tasks import create_task

        try:
            chance = create_task(name, **(options or {})).chance
        except (TypeError, ValueError):
            chance = None
    return {"metric": cls.metric, "lower_is_better": bool(cls.lower_is_better), "chance": chance,
            "published": dict(getattr(cls, "published", {}) or {})}


def _flatten(config, prefix: str = "") -> dict:
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            # An empty dict of options is the same configuration as none.
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def split_config(config: dict | None) -> tuple[dict, dict]:
    """A run's recorded config, seed and label left out, as (model part, task part) of flat dotted keys.

    A learning-rate trial's ``lr`` is left out when the run records the grid it belongs to (the
    grid stays, in the task part), and ``d_model`` when the run records the parameter budget that
    chose it (the budget stays, in the model part)."""
    model, task = {}, {}
    flat = _flatten(config or {})
    for key, value in flat.items():
        if key.rsplit(".", 1)[-1] in _IGNORED:
            continue
        if key in _SWEPT and flat.get(_SWEPT[key]) is not None:
            continue
        if key in _SWEPT.values() and value is None:  # no sweep, no budget: as in runs recorded before either
            continue
        (task if key.startswith(_TASK_KEYS) else model)[key] = value
    return model, task


def trial_lr(config: dict | None) -> float | None:
    """The learning rate of a run that is a trial of a learning-rate sweep; None for other runs."""
    run = (config or {}).get("run") or {}
    if run.get("lr_grid") is None:
        return None
    return (run.get("train_options") or {}).get("lr")


def choose_lr(trials: dict[float, list[dict]], metric: str, lower_is_better: bool) -> float | None:
    """The learning rate of ``trials`` (runs by learning rate) with the best mean validation metric.

    ``val_<metric>`` is averaged over each learning rate's runs (seeds); ties go to the lower mean
    ``val_loss``, then to the smaller learning rate. Learning rates none of whose runs has a
    validation metric cannot be chosen; None when no learning rate can."""
    scored = []
    for lr, runs in trials.items():
        found = [(r["metrics"] or {}).get(f"val_{metric}") for r in runs]
        found = [v for v in found if v is not None and v == v]
        if not found:
            continue
        losses = [v for v in ((r["metrics"] or {}).get("val_loss") for r in runs) if v is not None and v == v]
        value = statistics.fmean(found)
        loss = statistics.fmean(losses) if losses else float("inf")
        scored.append(((value if lower_is_better else -value), loss, lr))
    return min(scored)[2] if scored else None


def _key(flat: dict) -> str:
    return json.dumps(flat, sort_keys=True, default=str)


def _short(key: str) -> str:
    for prefix in ("run.task_options.", "run.train_options.", "run.model_options.", "run."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _differences(variants: dict[str, dict]) -> dict[str, str]:
    """For configurations (flat dicts by key), a label of each: the settings in which they differ."""
    if len(variants) < 2:
        return {k: "" for k in variants}
    keys = sorted({k for flat in variants.values() for k in flat})
    differing = [k for k in keys if len({_key({"v": flat.get(k, "default")}) for flat in variants.values()}) > 1]
    return {k: ", ".join(f"{_short(d)}={flat.get(d, 'default')}" for d in differing) for k, flat in variants.items()}


def leaderboard(store: ResultStore, *, suite: str | None = None) -> dict:
    """Aggregate the finished runs of ``suite`` into a board::

        {"columns": [{"key", "task", "metric", "lower_is_better", "chance", "published"}, ...],
         "rows": [{"key", "model", "cells": {column key: (mean, std, n)}, "run_ids": {column key: [id, ...]},
                   "task_params": {column key: n_params}, "n_params", "params_text", "time_s"}, ...],
         "skipped": [task names that are not registered, so have no declared metric]}

    A column's key is its task's name, with the task settings that set it apart from the task's
    other columns in brackets when it has several (``"mqar (seq_len=256)"``); a row's key is the
    model's name, likewise (``"mamba (d_model=128)"``). ``time_s`` is the mean wall time of one
    run of the row (over its seeds and tasks), not a sum.
    """
    found = defaultdict(list)  # (row key, column key) -> runs
    params: dict[str, dict[str, int]] = defaultdict(dict)
    rows_meta: dict[str, tuple[str, dict]] = {}
    columns_meta: dict[str, tuple[str, dict, dict]] = {}
    skipped = set()
    for run in store.runs(suite=suite):
        model_part, task_part = split_config(run["config"])
        info = task_info(run["task"], ((run["config"] or {}).get("run") or {}).get("task_options"))
        if info is None:
            skipped.add(run["task"])
            continue
        if (run["metrics"] or {}).get(f"test_{info['metric']}") is None:
            continue
        row = _key({"model": run["model"], **model_part})
        column = _key({"task": run["task"], **task_part})
        rows_meta[row] = (run["model"], model_part)
        columns_meta[column] = (run["task"], task_part, info)
        found[(row, column)].append(run)

    # Each cell: the runs of its chosen learning rate (all its runs when it is not a sweep).
    values, run_ids, chosen_lr, trials = {}, defaultdict(dict), defaultdict(dict), defaultdict(dict)
    seconds: dict[str, list[float]] = defaultdict(list)
    for (row, column), runs in found.items():
        info = columns_meta[column][2]
        test = f"test_{info['metric']}"
        by_lr = defaultdict(list)
        for run in runs:
            by_lr[trial_lr(run["config"])].append(run)
        lr = None
        if None not in by_lr:
            lr = choose_lr(by_lr, info["metric"], info["lower_is_better"])
            if lr is None:
                continue
        kept = by_lr[lr]
        values[(row, column)] = [r["metrics"][test] for r in kept]
        run_ids[row][column] = [r["id"] for r in kept]
        params[row][column] = kept[-1]["n_params"]
        seconds[row] += [r["wall_time_s"] for r in kept if r["wall_time_s"] is not None]
        if lr is not None:
            chosen_lr[row][column] = lr
            trials[row][column] = [
                {"lr": value, "chosen": value == lr, "run_ids": [r["id"] for r in group],
                 "val": _mean([(r["metrics"] or {}).get(f"val_{info['metric']}") for r in group]),
                 "test": _mean([(r["metrics"] or {}).get(test) for r in group])}
                for value, group in sorted(by_lr.items())]

    by_task = defaultdict(dict)
    for column, (task, task_part, _) in columns_meta.items():
        by_task[task][column] = task_part
    columns, column_label = [], {}
    for task in sorted(by_task):
        labels = _differences(by_task[task])
        for column in sorted(by_task[task], key=lambda c: labels[c]):
            column_label[column] = f"{task} ({labels[column]})" if labels[column] else task
            columns.append({"key": column_label[column], "task": task, **columns_meta[column][2]})

    by_model = defaultdict(dict)
    for row, (model, model_part) in rows_meta.items():
        by_model[model][row] = model_part
    rows = []
    for model in sorted(by_model):
        labels = _differences(by_model[model])
        for row in sorted(by_model[model], key=lambda r: labels[r]):
            counts = sorted(set(params[row].values()) - {None}) or [0]
            cells = {}
            for column, label in column_label.items():
                found = values.get((row, column))
                if found:
                    std = statistics.stdev(found) if len(found) > 1 else 0.0
                    cells[label] = (statistics.fmean(found), std, len(found))
            rows.append({"key": f"{model} ({labels[row]})" if labels[row] else model, "model": model,
                         "cells": cells, "run_ids": {column_label[c]: ids for c, ids in run_ids[row].items()},
                         "lr": {column_label[c]: lr for c, lr in chosen_lr[row].items()},
                         "trials": {column_label[c]: t for c, t in trials[row].items()},
                         "task_params": {column_label[c]: n for c, n in params[row].items()}, "n_params": counts[-1],
                         "params_text": f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}",
                         "time_s": statistics.fmean(seconds[row]) if seconds[row] else float("nan")})
    return {"columns": columns, "rows": rows, "skipped": sorted(skipped)}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.fmean(values) if values else None


def best_per_column(board: dict) -> dict[str, float | None]:
    """The best mean of each column, in that column's declared direction."""
    best = {}
    for column in board["columns"]:
        means = [r["cells"][column["key"]][0] for r in board["rows"] if column["key"] in r["cells"]]
        best[column["key"]] = (min if column["lower_is_better"] else max)(means, default=None)
    return best


def cell_text(cell, lr: float | None = None) -> str:
    """``mean ± std`` (the spread only over several seeds), and ``lr <value>`` when the cell's
    learning rate was chosen from a grid."""
    if cell is None:
        return "-"
    mean, std, n = cell
    return f"{mean:.3f}" + (f" ± {std:.3f}" if n > 1 else "") + (f" (lr {lr:g})" if lr is not None else "")


def references(board: dict) -> list[str]:
    """One line per task column that declares a chance level or published figures."""
    lines = []
    for c in board["columns"]:
        parts = []
        if c.get("chance") is not None:
            parts.append(f"chance {c['chance']:.3f}")
        for model, (value, source) in sorted(c.get("published", {}).items()):
            parts.append(f"{model} {value:.3f} published ({source})")
        if parts:
            lines.append(f"{c['key']}: " + "; ".join(parts))
    return lines


def protocol_note(board: dict) -> str | None:
    """How the learning rates of the board were chosen, or None when no cell comes from a sweep."""
    grids = {}
    for r in board["rows"]:
        for column, trials in r.get("trials", {}).items():
            grids.setdefault(column, {t["lr"] for t in trials})
    if not grids:
        return None
    metric = {c["key"]: c["metric"] for c in board["columns"]}
    text = "; ".join(f"{column}: {', '.join(f'{lr:g}' for lr in sorted(lrs))} (validation {metric[column]})"
                     for column, lrs in grids.items())
    return ("learning rate of each model chosen on the validation split from the grid shared by every model, "
            f"test metric reported for it (every trial is in the store): {text}")


def column_heading(column: dict) -> str:
    arrow = "↓" if column["lower_is_better"] else "↑"
    return f"{column['key']} {column['metric']} {arrow}"


TIME_HEADING = "time/run (s, mean)"


def format_table(board: dict) -> str:
    """Plain-text table; the best mean of each column, by its metric's direction, is marked with ``*``.

    Under the models, a ``chance`` row where a task declares its chance level; below the table,
    how learning rates were chosen (when they were) and each task's chance level and published figures.
    """
    columns = board["columns"]
    best = best_per_column(board)
    header = ["model", *(column_heading(c) for c in columns), "params", TIME_HEADING]
    lines = []
    for r in board["rows"]:
        line = [r["key"]]
        for c in columns:
            cell = r["cells"].get(c["key"])
            line.append(cell_text(cell, r.get("lr", {}).get(c["key"]))
                        + (" *" if cell is not None and cell[0] == best[c["key"]] else ""))
        line += [r["params_text"], f"{r['time_s']:.1f}"]
        lines.append(line)
    if any(c.get("chance") is not None for c in columns):
        lines.append(["(chance)", *("-" if c.get("chance") is None else f"{c['chance']:.3f}" for c in columns),
                      "", ""])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    out = ["test metric of each task (↑ higher is better, ↓ lower is better); mean ± std over seeds of runs with "
           "identical configurations; * best per column", fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(row) for row in lines]
    note = protocol_note(board)
    if note:
        out.append(note)
    out += references(board)
    if board.get("skipped"):
        out.append(f"not ranked (task not registered, so its metric is unknown): {', '.join(board['skipped'])}")
    return "\n".join(out)
