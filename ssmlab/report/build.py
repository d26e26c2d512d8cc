"""The report: tables and figures built from the results store alone.

``build_report(store, out_dir)`` writes, for every suite in the store:

* ``leaderboard.md`` and ``leaderboard.csv``: per suite, one row per model
  configuration and one column per task configuration (see
  :mod:`ssmlab.report.leaderboard`), the mean and standard deviation over seeds
  of the metric each task declares, the best of each column marked in that
  metric's direction, the learning rate chosen on validation where a
  learning-rate grid was swept, and each task's chance level and published
  figures;
* ``trials.csv``: every trial of every learning-rate sweep, with its mean
  validation and test metric and whether it was the one chosen;
* figures (PNG, with matplotlib): per suite, small multiples of the learning
  curves (one panel per task, few lines per axis, smoothed with the raw curve
  faint behind), each task's metric against parameter count with chance and
  published reference lines, the metric against sequence length where a suite
  varied it, and the efficiency measurements (time and memory against length,
  log-log);
* ``report.html``: one self-contained page with all of it, the figures
  embedded, so it can be mailed or archived as one file.

Without matplotlib the tables and the page are still written, and the page
says how to get the figures (``pip install 'ssmlab[report]'``).
"""

from __future__ import annotations

import base64
import csv
import html
import statistics
from collections import defaultdict
from pathlib import Path

from ssmlab.report.leaderboard import (TIME_HEADING, best_per_column, cell_text, column_heading, leaderboard,
                                      protocol_note, references, task_info)
from ssmlab.store import ResultStore

EFFICIENCY_SUITE = "efficiency"


def suite_tables(store: ResultStore) -> list[dict]:
    """One leaderboard per training suite (the efficiency suite is reported separately); each
    column is a task scored by its own declared metric and direction."""
    suites = sorted({r["suite"] for r in store.runs()} - {EFFICIENCY_SUITE})
    return [{**leaderboard(store, suite=suite), "suite": suite} for suite in suites]


_LEGEND = ("Test metric of each task (↑ higher is better, ↓ lower is better); mean ± standard deviation over "
           "seeds of runs whose configurations are identical apart from the seed; best per column {mark}; "
           "time: mean wall time of one run, in seconds.")


def markdown_tables(boards: list[dict]) -> str:
    parts = []
    for board in boards:
        best = best_per_column(board)
        parts.append(f"## Suite `{board['suite']}`\n\n" + _LEGEND.format(mark="in bold") + "\n")
        header = ["model", *(column_heading(c) for c in board["columns"]), "parameters", TIME_HEADING]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("| " + " | ".join("---" for _ in header) + " |")
        for r in board["rows"]:
            cells = []
            for c in board["columns"]:
                cell = r["cells"].get(c["key"])
                text = cell_text(cell, r.get("lr", {}).get(c["key"]))
                cells.append(f"**{text}**" if cell is not None and cell[0] == best[c["key"]] else text)
            parts.append("| " + " | ".join([f"`{r['key']}`", *cells, r["params_text"], f"{r['time_s']:.1f}"]) + " |")
        note = protocol_note(board)
        if note:
            parts.append(f"\nThe {note}.")
        levels = references(board)
        if levels:
            parts.append("\nReference levels: " + "; ".join(levels) + ".")
        if board["skipped"]:
            parts.append(f"\nNot ranked (task not registered, so its metric is unknown): {', '.join(board['skipped'])}.")
        parts.append("")
    return "\n".join(parts)


def write_csv(boards: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["suite", "model", "task", "metric", "lower_is_better", "mean", "std", "seeds", "n_params",
                         "time_per_run_s", "lr"])
        for board in boards:
            for r in board["rows"]:
                for c in board["columns"]:
                    if c["key"] in r["cells"]:
                        mean, std, n = r["cells"][c["key"]]
                        writer.writerow([board["suite"], r["key"], c["key"], c["metric"], c["lower_is_better"], mean,
                                         std, n, r["task_params"].get(c["key"], r["n_params"]), r["time_s"],
                                         r.get("lr", {}).get(c["key"], "")])


def write_trials_csv(boards: list[dict], path: Path) -> None:
    """Every trial of every learning-rate sweep: its mean validation and test metric and whether it was chosen."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["suite", "model", "task", "metric", "lr", "val_mean", "test_mean", "seeds", "chosen",
                         "run_ids"])
        for board in boards:
            metric = {c["key"]: c["metric"] for c in board["columns"]}
            for r in board["rows"]:
                for column, trials in r.get("trials", {}).items():
                    for t in trials:
                        writer.writerow([board["suite"], r["key"], column, metric[column], t["lr"], t["val"],
                                         t["test"], len(t["run_ids"]), t["chosen"],
                                         " ".join(map(str, t["run_ids"]))])


def efficiency_rows(store: ResultStore) -> list[dict]:
    """The stored efficiency measurements, one dict per (mixer, length), with their scaling summary."""
    rows = []
    for run in store.runs(suite=EFFICIENCY_SUITE):
        m = dict(run["metrics"] or {})
        m["mixer"] = run["model"]
        rows.append(m)
    return rows


def efficiency_summary(rows: list[dict]) -> list[dict]:
    from ssmlab.bench.efficiency import Measurement, summarise

    fields = Measurement.__dataclass_fields__
    measurements = [Measurement(**{k: r.get(k) for k in fields}) for r in rows]
    # Repeated measurements of one (mixer, length) keep the latest.
    latest = {(m.mixer, m.length): m for m in measurements}
    return summarise(list(latest.values()))


def markdown_efficiency(summary: list[dict]) -> str:
    if not summary:
        return ""

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["## Efficiency", "", "Time ~ L^k fitted on a log-log scale; the crossover is the length from which "
             "the mixer is faster than attention (interpolated; - when it is not within the measured lengths).", "",
             "| mixer | lengths | k forward | k forward+backward | crossover forward | crossover forward+backward |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        lines.append(f"| `{s['mixer']}` | {', '.join(map(str, s['lengths']))} | {fmt(s['forward_ms_exponent'], '.2f')}"
                     f" | {fmt(s['forward_backward_ms_exponent'], '.2f')} | {fmt(s['forward_ms_crossover'], '.0f')}"
                     f" | {fmt(s['forward_backward_ms_crossover'], '.0f')} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# At most this many lines share one axis; a suite with more models gets more panels per task.
LINES_PER_AXIS = 7


def _mean_curve(store: ResultStore, run_ids: list[int], split: str, name: str):
    """The curve ``(split, name)`` averaged over the runs (seeds) at each logged step."""
    by_step = defaultdict(list)
    for curve in store.curves_of(run_ids, split=split, name=name).values():
        for step, _, _, value in curve:
            if value is not None:
                by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def smooth(values: list[float], span: int | None = None) -> list[float]:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, debiased at the start as in
    TensorBoard; ``span`` defaults to a tenth of the points (at least 1: no smoothing)."""
    span = span or max(1, len(values) // 10)
    alpha, average, weight, out = 2 / (span + 1), 0.0, 0.0, []
    for v in values:
        average = (1 - alpha) * average + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def _colours(plt, names: list[str]) -> dict[str, tuple]:
    """One distinct colour per name, the same in every figure of a suite."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _grid(plt, n_panels: int, *, ncols: int = 3, size=(4.2, 3.0)):
    ncols = min(ncols, n_panels)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def _finish(plt, fig, path: Path, handles=None, labels=None) -> Path:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _plain_log_ticks(axis, fmt: str = "{:g}") -> None:
    """Tick labels of a log axis as plain numbers (``0.3``, ``20,000``), not ``3 x 10^-1``."""
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):
        # Over more than a factor of 3 only 2 and 5 times a power of ten are labelled, so that labels do not collide.
        low, high = sorted(axis.get_view_interval())
        return fmt.format(v) if low <= 0 or high / low < 3 or f"{v:e}"[0] in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt.format(v)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _groups(rows: list, size: int) -> list[list]:
    """``rows`` cut into the fewest groups of at most ``size``, as even as possible."""
    n_groups = max(1, -(-len(rows) // size))
    per = -(-len(rows) // n_groups) if rows else 0
    return [rows[i:i + per] for i in range(0, len(rows), per)] if rows else []


def learning_curve_figures(boards: list[dict], store: ResultStore, plt, out_dir: Path) -> list[tuple[str, Path]]:
    """Per suite, small multiples of the training loss: one panel per task (a row of panels per task
    when the suite has more than ``LINES_PER_AXIS`` models, each with its share of them), the mean
    over seeds smoothed, the raw curve faint behind, a log scale when the loss spans more than a factor of 5."""
    figures = []
    for board in boards:
        colours = _colours(plt, [r["key"] for r in board["rows"]])
        n_groups = len(_groups(board["rows"], LINES_PER_AXIS))
        panels = []
        for c in board["columns"]:
            rows = [r for r in board["rows"] if r["run_ids"].get(c["key"])]
            for i, group in enumerate(_groups(rows, -(-len(rows) // n_groups) if rows else 1)):
                curves = {r["key"]: _mean_curve(store, r["run_ids"][c["key"]], "train", "loss") for r in group}
                curves = {k: v for k, v in curves.items() if v[0]}
                if curves:
                    panels.append((c["key"] + (f" ({i + 1}/{n_groups})" if n_groups > 1 else ""), curves))
        if not panels:
            continue
        fig, axes = _grid(plt, len(panels), ncols=n_groups if n_groups > 1 else 3)
        fig.set_layout_engine("constrained")
        for ax, (title, curves) in zip(axes, panels):
            low, high = float("inf"), 0.0
            for key, (steps, values) in curves.items():
                ax.plot(steps, values, color=colours[key], alpha=0.2, linewidth=0.8)
                ax.plot(steps, smooth(values), color=colours[key], linewidth=1.6, label=key)
                positive = [v for v in values if v > 0]
                if positive:
                    low, high = min(low, min(positive)), max(high, max(positive))
            if 0 < low and high / low > 5:
                ax.set_yscale("log")
                _plain_log_ticks(ax.yaxis)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("training loss", fontsize=8)
            ax.tick_params(labelsize=7, which="both")
            ax.grid(alpha=0.3, which="both")
        handles = [plt.Line2D([], [], color=colours[k], linewidth=2) for k in colours]
        path = _finish(plt, fig, out_dir / f"curves-{_safe(board['suite'])}.png", handles, list(colours))
        figures.append((board["suite"], f"Training loss, one panel per task (mean over seeds, smoothed; raw faint): "
                        f"{board['suite']}", path))
    return figures


def parameter_figures(boards: list[dict], plt, out_dir: Path) -> list[tuple[str, Path]]:
    """Per suite, each task's metric against parameter count (log scale), one panel per task, with the
    task's chance level and published figures as reference lines."""
    figures = []
    for board in boards:
        columns = [c for c in board["columns"] if any(c["key"] in r["cells"] for r in board["rows"])]
        if not columns:
            continue
        colours = _colours(plt, [r["key"] for r in board["rows"]])
        fig, axes = _grid(plt, len(columns))
        fig.set_layout_engine("constrained")
        for ax, c in zip(axes, columns):
            for r in board["rows"]:
                if c["key"] not in r["cells"]:
                    continue
                mean, std, _ = r["cells"][c["key"]]
                ax.errorbar([r["task_params"].get(c["key"]) or r["n_params"]], [mean], yerr=[std], fmt="o",
                            color=colours[r["key"]], capsize=2, markersize=5)
            if c.get("chance") is not None:
                ax.axhline(c["chance"], color="0.4", linestyle=":", linewidth=1)
                ax.annotate("chance", (0.01, c["chance"]), xycoords=("axes fraction", "data"), fontsize=7,
                            color="0.3", va="bottom")
            # Published figures of the models on this board (the others are listed under the table).
            present = {r["model"]: colours[r["key"]] for r in board["rows"]}
            for model, (value, _source) in sorted(c.get("published", {}).items()):
                if model not in present:
                    continue
                colour = present[model]
                ax.axhline(value, color=colour, linestyle="--", linewidth=1)
                ax.annotate(f"{model}, published", (0.99, value), xycoords=("axes fraction", "data"), fontsize=7,
                            color=colour, ha="right", va="bottom")
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis, "{:,.0f}")
            arrow = "lower is better" if c["lower_is_better"] else "higher is better"
            ax.set_title(c["key"], fontsize=10)
            ax.set_xlabel("parameters", fontsize=8)
            ax.set_ylabel(f"test {c['metric']} ({arrow})", fontsize=8)
            ax.tick_params(labelsize=7, which="both")
            ax.grid(alpha=0.3, which="both")
        handles = [plt.Line2D([], [], color=colours[k], marker="o", linestyle="") for k in colours]
        path = _finish(plt, fig, out_dir / f"params-{_safe(board['suite'])}.png", handles, list(colours))
        figures.append((board["suite"], f"Test metric against parameter count (mean ± std over seeds; dotted: "
                        f"chance; dashed: published): {board['suite']}", path))
    return figures


def length_figures(store: ResultStore, plt, out_dir: Path) -> list[tuple[str, Path]]:
    """Metric against the task's ``seq_len`` option, where a suite ran a task at several lengths."""
    figures = []
    runs = [r for r in store.runs() if r["suite"] != EFFICIENCY_SUITE]
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        options = ((r["config"] or {}).get("run") or {}).get("task_options") or {}
        info = task_info(r["task"], options)
        if "seq_len" not in options or info is None:
            continue
        value = (r["metrics"] or {}).get(f"test_{info['metric']}")
        if value is not None:
            groups[(r["suite"], r["task"], info["metric"])][r["model"]][options["seq_len"]].append(value)
    for (suite, task, metric), per_model in sorted(groups.items()):
        if all(len(per_len) < 2 for per_len in per_model.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
        colours = _colours(plt, sorted(per_model))
        for model, per_len in sorted(per_model.items()):
            lengths = sorted(per_len)
            ax.plot(lengths, [statistics.fmean(per_len[n]) for n in lengths], marker="o", label=model,
                    color=colours[model])
        ax.set(title=f"{suite}: {task}", xlabel="sequence length", ylabel=f"test {metric}", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = _finish(plt, fig, out_dir / f"length-{_safe(suite)}-{_safe(task)}.png")
        figures.append((suite, f"Test {metric} against sequence length: {suite} / {task}", path))
    return figures


def efficiency_figures(rows: list[dict], plt, out_dir: Path) -> list[tuple[str, Path]]:
    if not rows:
        return []
    panels = [("forward_ms", "forward time (ms)"), ("forward_backward_ms", "forward + backward time (ms)"),
              ("peak_memory_mb", "peak memory, forward + backward (MiB)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    by_mixer = defaultdict(dict)
    for r in rows:
        by_mixer[r["mixer"]][r["length"]] = r
    colours = _colours(plt, sorted(by_mixer))
    for ax, (key, label) in zip(axes, panels):
        for mixer, per_len in sorted(by_mixer.items()):
            lengths = sorted(n for n in per_len if per_len[n].get(key) is not None)
            if lengths:
                ax.plot(lengths, [per_len[n][key] for n in lengths], marker="o", color=colours[mixer])
        ax.set(xlabel="sequence length", ylabel=label, xscale="log", yscale="log")
        _plain_log_ticks(ax.xaxis)
        _plain_log_ticks(ax.yaxis)
        ax.tick_params(labelsize=7, which="both")
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=colours[k], marker="o") for k in colours]
    path = _finish(plt, fig, out_dir / "efficiency.png", handles, list(colours))
    return [(EFFICIENCY_SUITE, "Efficiency against sequence length (log-log)", path)]


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.best{font-weight:bold;background:#e3f2e3}td.ref{color:#666;font-style:italic}
figure{margin:1.5em 0}figcaption{color:#444;font-size:0.9em;margin-bottom:0.4em}img{max-width:100%}
code{font-size:0.95em}.note{color:#666}"""


def _html_table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{f' class={css}' if css else ''}>{html.escape(text)}</td>"
                                    for text, css in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_figure(title: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><figcaption>{html.escape(title)}</figcaption><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{data}'></figure>")


def html_page(boards, summary, figures, environment: dict | None, note: str | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ssmlab report</title><style>{_CSS}</style>"
             "</head><body><h1>ssmlab report</h1>"]
    if environment:
        env = ", ".join(f"{k}: {v}" for k, v in sorted(environment.items()) if v is not None)
        parts.append(f"<p class=note>Environment of the latest run: {html.escape(env)}</p>")
    if note:
        parts.append(f"<p class=note>{html.escape(note)}</p>")
    for board in boards:
        best = best_per_column(board)
        parts.append(f"<h2>Suite {html.escape(board['suite'])}</h2><p>"
                     f"{html.escape(_LEGEND.format(mark='highlighted'))}</p>")
        rows = []
        for r in board["rows"]:
            cells = [(r["key"], "")]
            for c in board["columns"]:
                cell = r["cells"].get(c["key"])
                cells.append((cell_text(cell, r.get("lr", {}).get(c["key"])), "best" if cell is not None and cell[0] == best[c["key"]] else ""))
            rows.append(cells + [(r["params_text"], ""), (f"{r['time_s']:.1f}", "")])
        if any(c.get("chance") is not None for c in board["columns"]):
            rows.append([("chance", "ref"), *(("-" if c.get("chance") is None else f"{c['chance']:.3f}", "ref")
                                             for c in board["columns"]), ("", "ref"), ("", "ref")])
        parts.append(_html_table(["model", *(column_heading(c) for c in board["columns"]), "parameters",
                                  TIME_HEADING], rows))
        note = protocol_note(board)
        if note:
            parts.append(f"<p class=note>The {html.escape(note)}.</p>")
        levels = references(board)
        if levels:
            parts.append("<p class=note>Reference levels: " + html.escape("; ".join(levels)) + ".</p>")
        if board["skipped"]:
            parts.append(f"<p class=note>Not ranked (task not registered, so its metric is unknown): "
                         f"{html.escape(', '.join(board['skipped']))}.</p>")
        parts += [_html_figure(title, path) for suite, title, path in figures if suite == board["suite"]]
    if summary:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        parts.append("<h2>Efficiency</h2><p>Time ~ L<sup>k</sup> fitted on a log-log scale; the crossover is the "
                     "length from which the mixer is faster than attention.</p>")
        rows = [[(s["mixer"], ""), (", ".join(map(str, s["lengths"])), ""),
                 (fmt(s["forward_ms_exponent"], ".2f"), ""), (fmt(s["forward_backward_ms_exponent"], ".2f"), ""),
                 (fmt(s["forward_ms_crossover"], ".0f"), ""), (fmt(s["forward_backward_ms_crossover"], ".0f"), "")]
                for s in summary]
        parts.append(_html_table(["mixer", "lengths", "k forward", "k forward+backward", "crossover forward",
                                  "crossover forward+backward"], rows))
    parts += [_html_figure(title, path) for suite, title, path in figures if suite == EFFICIENCY_SUITE]
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(store: ResultStore, out_dir, *, figures: bool = True) -> dict[str, Path]:
    """Write the tables, figures and the HTML page to ``out_dir``; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boards = suite_tables(store)
    eff_rows = efficiency_rows(store)
    summary = efficiency_summary(eff_rows) if eff_rows else []
    paths = {"markdown": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv",
             "trials": out_dir / "trials.csv", "html": out_dir / "report.html"}
    paths["markdown"].write_text("# ssmlab leaderboard\n\n" + markdown_tables(boards) + "\n"
                                 + markdown_efficiency(summary))
    write_csv(boards, paths["csv"])
    write_trials_csv(boards, paths["trials"])
    figure_list, note = [], None
    plt = _pyplot() if figures else None
    if figures and plt is None:
        note = "Figures need matplotlib: pip install 'ssmlab[report]'."
    if plt is not None:
        figure_list = (learning_curve_figures(boards, store, plt, out_dir) + parameter_figures(boards, plt, out_dir)
                       + length_figures(store, plt, out_dir) + efficiency_figures(eff_rows, plt, out_dir))
    runs = store.runs()
    environment = runs[-1]["environment"] if runs else None
    paths["html"].write_text(html_page(boards, summary, figure_list, environment, note))
    paths["figures"] = [p for _, _, p in figure_list]
    return paths
