"""The report: tables and figures built from the results store alone.

``build_report(store, out_dir)`` writes, for every suite in the store:

* ``leaderboard.md`` and ``leaderboard.csv``: per suite, one row per model and
  one column per task, the mean and standard deviation over seeds of each task's
  metric, the best mean of each column marked;
* figures (PNG, with matplotlib): learning curves per suite and task, the
  metric against sequence length where a suite varied it, and the efficiency
  measurements (time and memory against length, log-log);
* ``report.html``: one self-contained page with all of it, the figures
  embedded, so it can be mailed or archived as one file.

Without matplotlib the tables and the page are still written, and the page
says how to get the figures (``pip install 'ssmlab[report]'``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import statistics
from collections import defaultdict
from pathlib import Path

from ssmlab.report.leaderboard import leaderboard
from ssmlab.store import ResultStore

EFFICIENCY_SUITE = "efficiency"


def _metric_for(runs: list[dict]) -> str:
    """The metric a suite is ranked by: test accuracy when the runs have it, else the first test metric."""
    names = {k for run in runs for k in (run["metrics"] or {})}
    if "test_accuracy" in names:
        return "test_accuracy"
    tests = sorted(n for n in names if n.startswith("test_"))
    return tests[0] if tests else "train_loss"


def _lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("loss", "mse", "mae", "bpb", "bits", "perplexity", "error"))


def suite_tables(store: ResultStore) -> list[dict]:
    """One leaderboard per training suite (the efficiency suite is reported separately)."""
    suites = sorted({r["suite"] for r in store.runs()} - {EFFICIENCY_SUITE})
    boards = []
    for suite in suites:
        board = leaderboard(store, suite=suite, metric=_metric_for(store.runs(suite=suite)))
        board["suite"] = suite
        board["lower_is_better"] = _lower_is_better(board["metric"])
        boards.append(board)
    return boards


def _best(board: dict) -> dict:
    pick = min if board.get("lower_is_better") else max
    return {t: pick((r["cells"][t][0] for r in board["rows"] if t in r["cells"]), default=None)
            for t in board["tasks"]}


def _cell_text(cell, best, bold=("**", "**")) -> str:
    if cell is None:
        return "-"
    mean, std, n = cell
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if n > 1 else "")
    return f"{bold[0]}{text}{bold[1]}" if mean == best else text


def markdown_tables(boards: list[dict]) -> str:
    parts = []
    for board in boards:
        best = _best(board)
        direction = "lower is better" if board["lower_is_better"] else "higher is better"
        parts.append(f"## Suite `{board['suite']}`\n\nMetric: `{board['metric']}` ({direction}); mean ± standard "
                     f"deviation over seeds; best per column in bold.\n")
        header = ["model", *board["tasks"], "parameters", "time (s)"]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("| " + " | ".join("---" for _ in header) + " |")
        for r in board["rows"]:
            cells = [_cell_text(r["cells"].get(t), best[t]) for t in board["tasks"]]
            parts.append("| " + " | ".join([f"`{r['model']}`", *cells, r["params_text"],
                                             f"{r['wall_time_s']:.1f}"]) + " |")
        parts.append("")
    return "\n".join(parts)


def write_csv(boards: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["suite", "metric", "model", "task", "mean", "std", "seeds", "n_params", "wall_time_s"])
        for board in boards:
            for r in board["rows"]:
                for task, (mean, std, n) in sorted(r["cells"].items()):
                    writer.writerow([board["suite"], board["metric"], r["model"], task, mean, std, n,
                                     r["task_params"].get(task, r["n_params"]), r["wall_time_s"]])


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


# Figures ---------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _mean_curve(store: ResultStore, run_ids: list[int], split: str, name: str):
    by_step = defaultdict(list)
    for curve in store.curves_of(run_ids, split=split, name=name).values():
        for step, _, _, value in curve:
            if value is not None:
                by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def _save(plt, fig, ax, path: Path) -> Path:
    """Grid, legend, layout; write the PNG and close the figure."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curve_figures(store: ResultStore, plt, out_dir: Path) -> list[tuple[str, Path]]:
    figures = []
    runs = [r for r in store.runs() if r["suite"] != EFFICIENCY_SUITE]
    groups = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[(r["suite"], r["task"])][r["model"]].append(r["id"])
    for (suite, task), per_model in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for model, ids in sorted(per_model.items()):
            steps, values = _mean_curve(store, ids, "train", "loss")
            if steps:
                ax.plot(steps, values, label=model, linewidth=1.2)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.set(title=f"{suite}: {task}", xlabel="step", ylabel="training loss (mean over seeds)")
        figures.append((f"Learning curves: {suite} / {task}", _save(plt, fig, ax, out_dir / f"curves-{suite}-{task}.png")))
    return figures


def length_figures(store: ResultStore, plt, out_dir: Path) -> list[tuple[str, Path]]:
    """Metric against the task's ``seq_len`` option, where a suite ran a task at several lengths."""
    figures = []
    runs = [r for r in store.runs() if r["suite"] != EFFICIENCY_SUITE]
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        options = ((r["config"] or {}).get("run") or {}).get("task_options") or {}
        if "seq_len" not in options:
            continue
        metric = _metric_for([r])
        value = (r["metrics"] or {}).get(metric)
        if value is not None:
            groups[(r["suite"], r["task"], metric)][r["model"]][options["seq_len"]].append(value)
    for (suite, task, metric), per_model in sorted(groups.items()):
        if all(len(per_len) < 2 for per_len in per_model.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for model, per_len in sorted(per_model.items()):
            lengths = sorted(per_len)
            ax.plot(lengths, [statistics.fmean(per_len[n]) for n in lengths], marker="o", label=model)
        ax.set(title=f"{suite}: {task}", xlabel="sequence length", ylabel=metric, xscale="log")
        path = _save(plt, fig, ax, out_dir / f"length-{suite}-{task}.png")
        figures.append((f"{metric} against sequence length: {suite} / {task}", path))
    return figures


def efficiency_figures(rows: list[dict], plt, out_dir: Path) -> list[tuple[str, Path]]:
    if not rows:
        return []
    figures = []
    panels = [("forward_ms", "forward time (ms)"), ("forward_backward_ms", "forward + backward time (ms)"),
              ("peak_memory_mb", "peak memory, forward + backward (MiB)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_mixer = defaultdict(dict)
    for r in rows:
        by_mixer[r["mixer"]][r["length"]] = r
    for ax, (key, label) in zip(axes, panels):
        for mixer, per_len in sorted(by_mixer.items()):
            lengths = sorted(n for n in per_len if per_len[n].get(key) is not None)
            if lengths:
                ax.plot(lengths, [per_len[n][key] for n in lengths], marker="o", label=mixer)
        ax.set(xlabel="sequence length", ylabel=label, xscale="log", yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6, ncol=2)
    path = out_dir / "efficiency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    figures.append(("Efficiency against sequence length (log-log)", path))
    return figures


# The page ------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.best{font-weight:bold;background:#eef7ee}img{max-width:100%}code{font-size:0.95em}
.note{color:#666}"""


def _html_table(header: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=best' if best else ''}>{html.escape(text)}</td>"
                                    for text, best in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(boards, summary, figures, environment: dict | None, note: str | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ssmlab report</title><style>{_CSS}</style>"
             "</head><body><h1>ssmlab report</h1>"]
    if environment:
        env = ", ".join(f"{k}: {v}" for k, v in sorted(environment.items()) if v is not None)
        parts.append(f"<p class=note>Environment of the latest run: {html.escape(env)}</p>")
    if note:
        parts.append(f"<p class=note>{html.escape(note)}</p>")
    for board in boards:
        best = _best(board)
        direction = "lower is better" if board["lower_is_better"] else "higher is better"
        parts.append(f"<h2>Suite {html.escape(board['suite'])}</h2><p>Metric <code>{html.escape(board['metric'])}"
                     f"</code> ({direction}), mean ± standard deviation over seeds; best per column highlighted.</p>")
        rows = []
        for r in board["rows"]:
            cells = [(r["model"], False)]
            for t in board["tasks"]:
                cell = r["cells"].get(t)
                cells.append((_cell_text(cell, best[t], ("", "")), cell is not None and cell[0] == best[t]))
            cells += [(r["params_text"], False), (f"{r['wall_time_s']:.1f}", False)]
            rows.append(cells)
        parts.append(_html_table(["model", *board["tasks"], "parameters", "time (s)"], rows))
    if summary:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        parts.append("<h2>Efficiency</h2><p>Time ~ L<sup>k</sup> fitted on a log-log scale; the crossover is the "
                     "length from which the mixer is faster than attention.</p>")
        rows = [[(s["mixer"], False), (", ".join(map(str, s["lengths"])), False),
                 (fmt(s["forward_ms_exponent"], ".2f"), False), (fmt(s["forward_backward_ms_exponent"], ".2f"), False),
                 (fmt(s["forward_ms_crossover"], ".0f"), False), (fmt(s["forward_backward_ms_crossover"], ".0f"), False)]
                for s in summary]
        parts.append(_html_table(["mixer", "lengths", "k forward", "k forward+backward", "crossover forward",
                                  "crossover forward+backward"], rows))
    for title, path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{data}'>")
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
             "html": out_dir / "report.html"}
    paths["markdown"].write_text("# ssmlab leaderboard\n\n" + markdown_tables(boards) + "\n"
                                 + markdown_efficiency(summary))
    write_csv(boards, paths["csv"])
    figure_list, note = [], None
    plt = _pyplot() if figures else None
    if figures and plt is None:
        note = "Figures need matplotlib: pip install 'ssmlab[report]'."
    if plt is not None:
        figure_list = (learning_curve_figures(store, plt, out_dir) + length_figures(store, plt, out_dir)
                       + efficiency_figures(eff_rows, plt, out_dir))
    runs = store.runs()
    environment = runs[-1]["environment"] if runs else None
    paths["html"].write_text(html_page(boards, summary, figure_list, environment, note))
    paths["figures"] = [p for _, p in figure_list]
    return paths
