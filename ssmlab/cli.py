"""The ``ssmlab`` command: list what is registered, train, run suites, print leaderboards."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssmlab import registry
from ssmlab.experiment import suite_names
from ssmlab.registry import UnknownNameError
from ssmlab.train.sweep import run_config



def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd_list(args) -> int:
    kinds = {"mixers": "mixer", "tasks": "task", "models": "model"}
    chosen = [args.kind] if args.kind else list(kinds)
    for plural in chosen:
        entries = registry.entries(kinds[plural], args.pattern)
        print(f"{plural} ({len(entries)}):")
        width = max((len(e.name) for e in entries), default=0)
        if plural == "tasks":
            # One column per piece of registration metadata, so a user can see what each task costs.
            columns = ("source", "size", "seq_len", "metric")
            rows = [[e.name] + [str(e.extra.get(c, "-")) for c in columns]
                    + [e.description + (f"  [arXiv {e.paper}]" if e.paper else "")] for e in entries]
            header = ["name", "source", "size (train/val/test)", "seq len", "metric", "description"]
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(columns) + 1)]
            for row in [header] + rows:
                print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
            continue
        for e in entries:
            paper = f"  [arXiv {e.paper}]" if e.paper else ""
            causal = ""
            if plural == "mixers":
                causal = _direction(e.obj)
            print(f"  {e.name.ljust(width)}  {e.description}{paper}{causal}")
    return 0


def _direction(cls) -> str:
    """How ``ssmlab list`` describes a mixer's direction, read from instances (:func:`is_causal`)."""
    import inspect

    from ssmlab.mixers import is_causal

    if not is_causal(cls):
        return "  bidirectional"
    if "bidirectional" in inspect.signature(cls).parameters and not is_causal(cls, bidirectional=True):
        return "  causal (bidirectional with bidirectional=True)"
    return "  causal"


def _train_config(args):
    from ssmlab.train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress,
                       device=args.device, grad_accum_steps=args.grad_accum, precision=args.precision,
                       schedule=args.schedule, eval_every=args.eval_every, early_stopping_patience=args.patience,
                       checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every)


def _key_values(items, flag: str) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(text)
    return out


def _experiment_from_args(args):
    """The suite or YAML experiment with ``--set`` and the shortcut options applied, type-checked."""
    import json

    from ssmlab import experiment

    overrides = list(args.set or [])
    if args.mixers:
        names = _csv(args.mixers)
        for name in names:
            registry.get("mixer", name)
        overrides.append(f"models={json.dumps(names)}")
    if args.seeds:
        overrides.append(f"seeds={json.dumps(args.seeds)}")
    for flag, key in (("steps", "trainer.steps"), ("batch_size", "trainer.batch_size"), ("lr", "trainer.lr"),
                      ("d_model", "defaults.d_model"), ("n_layers", "defaults.n_layers")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    exp = experiment.load(args.suite, overrides)
    for flag in ("steps", "batch_size", "lr"):  # a trainer option on the command line wins over per-task ones
        if getattr(args, flag) is not None:
            for t in exp.tasks:
                t.trainer.pop(flag, None)
    if args.lr is not None:  # one learning rate given: no sweep
        exp.lr_grid = None
        for t in exp.tasks:
            t.lr_grid = None
    if args.tasks:
        wanted = _csv(args.tasks)
        for name in wanted:
            registry.get("task", name)
        # Keep the suite's options for the tasks it has; others get their defaults.
        exp.tasks = [t for t in exp.tasks if t.name in wanted] + \
            [experiment.TaskSpec(name) for name in wanted if name not in {t.name for t in exp.tasks}]
    return exp


def _cmd_run(args) -> int:
    from ssmlab import experiment
    from ssmlab.tasks import create_task, missing_source
    from ssmlab.config import from_dict
    from ssmlab.report import build_report, format_table, leaderboard
    from ssmlab.tasks.base import task_metric
    from ssmlab.store import ResultStore
    from ssmlab.train.sweep import execute
    from ssmlab.train.trainer import TrainConfig

    exp = _experiment_from_args(args)
    # A task whose data source is not installed is left out with the command that installs it.
    available = []
    for t in exp.tasks:
        missing = missing_source(create_task(t.name, **t.options))
        if missing:
            print(f"leaving out task {t.name}: {missing}", file=sys.stderr, flush=True)
        else:
            available.append(t)
    if not available:
        raise ValueError(f"none of the tasks of {exp.name} can be read here; install their sources (above)")
    exp.tasks = available
    specs = experiment.expand(exp)
    for line in experiment.left_out(exp):
        print(line, file=sys.stderr, flush=True)
    trainer = dict(exp.trainer)
    if args.device is not None:
        trainer["device"] = args.device
    if args.no_progress:
        trainer["progress"] = False
    config = from_dict(TrainConfig, trainer)
    started = time.perf_counter()
    done = failed = 0
    with ResultStore(args.store) as store:
        print(f"suite {exp.name}: {len(specs)} runs, results in {store.path}", flush=True)
        todo = []
        for spec in specs:
            previous = store.find_finished(suite=exp.name, config=run_config(spec, config))
            if previous is None:
                todo.append(spec)
            else:
                print(f"{_label(spec)}: already finished as run {previous['id']}, skipped", flush=True)
        # Each run checkpoints under the store's folder (every trainer.checkpoint_every steps and at
        # the end), so a sweep started again resumes its unfinished runs.
        checkpoints = store.path.parent / "checkpoints" / exp.name
        if args.executor == "ray":
            from ssmlab.train.sweep import execute_ray

            print(f"sending {len(todo)} runs to Ray ({args.address or 'a local instance'})", flush=True)
            results = execute_ray(todo, config, store, suite=exp.name, address=args.address,
                                  checkpoint_root=checkpoints)
        else:
            results = ((spec, execute(spec, config, store, suite=exp.name, checkpoint_root=checkpoints), None)
                       for spec in todo)
        for i, (spec, run_id, error) in enumerate(results, 1):
            prefix = f"[{i}/{len(todo)}] {_label(spec)}"
            if error is not None:
                failed += 1
                print(f"{prefix}: failed: {error}", flush=True)
                continue
            row = next(r for r in store.runs() if r["id"] == run_id)
            metric = f"test_{task_metric(spec.task)[0]}"
            print(f"{prefix}: {metric} {row['metrics'].get(metric, float('nan')):.3f} in {row['wall_time_s']:.1f}s",
                  flush=True)
            done += 1
        skipped = len(specs) - len(todo)
        print(f"\nfinished {done} runs in {time.perf_counter() - started:.0f}s"
              + (f" ({skipped} already in the store)" if skipped else "")
              + (f"; {failed} failed" if failed else "") + "\n")
        print(format_table(leaderboard(store, suite=exp.name)))
        paths = build_report(store, args.report_dir or store.path.parent / "report")
    print(f"\nreport: {paths['html']}")
    return 1 if failed else 0


def _label(spec) -> str:
    from ssmlab.train.sweep import model_label

    trial = f", lr {spec.train_options['lr']:g}" if spec.lr_grid else ""
    return f"{model_label(spec)} on {spec.task} (seed {spec.seed}{trial})"


def _cmd_train(args) -> int:
    from ssmlab.store import ResultStore
    from ssmlab.train import distributed
    from ssmlab.train.sweep import QUICK_TASKS, RunSpec, execute, train_spec

    registry.get("mixer", args.mixer)
    registry.get("task", args.task)
    task_options = {**QUICK_TASKS.get(args.task, {}), **_key_values(args.task_option, "--task-option")}
    spec = RunSpec(args.mixer, args.task, args.seed, task_options,
                   _key_values(args.model_option, "--model-option"), d_model=args.d_model, n_layers=args.n_layers)
    config = _train_config(args)
    if distributed.rank() != 0:  # under torchrun only rank 0 records the run
        train_spec(spec, config)
        return 0
    with ResultStore(args.store) as store:
        run_id = execute(spec, config, store, suite="train")
        run = next(r for r in store.runs() if r["id"] == run_id)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(run["metrics"].items()))
    print(f"run {run_id}: {args.mixer} on {args.task}: {metrics} ({run['wall_time_s']:.1f}s, "
          f"{run['n_params']:,} parameters)")
    return 0


def _cmd_generate(args) -> int:
    from pathlib import Path

    import torch

    from ssmlab.interop import load_pretrained

    model = load_pretrained(args.checkpoint).eval()
    tokenizer_file = Path(args.checkpoint) / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        ids = tokenizer.encode(args.prompt).ids
        decode = tokenizer.decode
    else:
        if model.encoder.vocab_size < 256:
            raise ValueError(f"{args.checkpoint} has no tokenizer.json and a vocabulary of "
                             f"{model.encoder.vocab_size} < 256 tokens, too small for byte-level tokens")
        ids = list(args.prompt.encode("utf-8"))
        decode = lambda tokens: bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")  # noqa: E731
    if not ids:
        raise ValueError("the prompt is empty after tokenisation")
    generator = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=generator)
    print(decode(out[0].tolist()))
    return 0


def _cmd_report(args) -> int:
    from ssmlab.report import build_report, format_table
    from ssmlab.report.build import suite_tables
    from ssmlab.store import ResultStore, default_path

    path = Path(args.store) if args.store else default_path()
    if not path.is_file():
        raise ValueError(f"no results store at {path}; run `ssmlab run` first or pass --store")
    with ResultStore(path) as store:
        for board in suite_tables(store):
            print(f"suite {board['suite']}")
            print(format_table(board) + "\n")
        paths = build_report(store, args.out or path.parent / "report", figures=not args.no_figures)
    print(f"markdown: {paths['markdown']}\ncsv: {paths['csv']}\nreport: {paths['html']}")
    return 0


def _cmd_efficiency(args) -> int:
    from ssmlab.bench.efficiency import measure, store_measurements, summarise
    from ssmlab.store import ResultStore

    mixers = _csv(args.mixers)
    for name in mixers:
        registry.get("mixer", name)
    if any(n < 1 for n in args.lengths):
        raise ValueError(f"lengths must be positive, got {args.lengths}")
    options: dict[str, dict] = {}
    for key, value in _key_values(args.mixer_option, "--mixer-option").items():
        mixer, _, option = key.partition(".")
        if mixer not in mixers or not option:
            raise ValueError(f"--mixer-option expects MIXER.OPTION=VALUE for one of {mixers}, got {key!r}")
        options.setdefault(mixer, {})[option] = value
    results, failed = [], []
    with ResultStore(args.store) as store:
        for name in mixers:
            try:
                ms = measure(name, args.lengths, d_model=args.d_model, batch_size=args.batch_size,
                             repeats=args.repeats, device=args.device, backward=not args.forward_only,
                             memory=not args.no_memory, mixer_options=options.get(name))
            except (ValueError, RuntimeError) as exc:  # e.g. a length beyond the mixer's l_max
                print(f"{name:>18} not measured: {exc}", flush=True)
                failed.append(name)
                continue
            for m in ms:
                memory = "-" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.1f} MiB"
                print(f"{name:>18} L={m.length:<6} forward {m.forward_ms:9.2f} ms  forward+backward "
                      f"{m.forward_backward_ms:9.2f} ms  {m.tokens_per_s:12,.0f} tokens/s  peak {memory}", flush=True)
            store_measurements(store, ms)  # as each mixer finishes, so nothing measured is lost
            results += ms
        print()
        for row in summarise(results):
            exps = ", ".join(f"{k.replace('_ms_exponent', '')} k={row[k]:.2f}" for k in
                             ("forward_ms_exponent", "forward_backward_ms_exponent") if row[k] is not None)
            cross = row["forward_ms_crossover"]
            crossing = "" if row["mixer"] == "attention" or "attention" not in mixers else \
                (f"; faster than attention from L ~ {cross:.0f}" if cross else "; not faster than attention here")
            print(f"{row['mixer']:>18}: time ~ L^k with {exps}{crossing}")
        print(f"\nstored {len(results)} measurements in {store.path} (suite 'efficiency'; `ssmlab report` plots them)")
    return 1 if failed else 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per run (default 200)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--d-model", type=int, default=32, help="model width (default 32)")
    p.add_argument("--n-layers", type=int, default=2, help="number of blocks (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--store", default=None, help="results database (default ssmlab-results/results.sqlite "
                                                  "or $SSMLAB_STORE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmlab", description="State space sequence models: list, train, compare.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered mixers, tasks and models")
    p.add_argument("kind", nargs="?", choices=["mixers", "tasks", "models"], help="only this kind")
    p.add_argument("--pattern", default="*", help="glob on names (default *)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="train a suite of mixers x tasks and print the leaderboard",
                       description="Train every registered mixer on the suite's tasks, record each run in the "
                                   "results store and print a leaderboard read back from it.")
    p.add_argument("suite", nargs="?", default="quick",
                   help=f"a shipped suite ({', '.join(suite_names())}; default quick) or an experiment YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an entry of the suite by its dotted path, e.g. trainer.lr=1e-3 (repeatable)")
    p.add_argument("--mixers", help="comma-separated mixer names (default: the suite's models)")
    p.add_argument("--tasks", help="comma-separated task names (default: the suite's tasks)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the suite's)")
    p.add_argument("--report-dir", default=None, help="where the report goes (default: 'report' beside the store)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="run here one after another (default) or on a Ray cluster (needs ssmlab[ray])")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (trainer.steps)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (trainer.batch_size)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (trainer.lr); replaces the suite's learning-rate grid")
    p.add_argument("--d-model", type=int, default=None, help="width of models that do not set one (defaults.d_model)")
    p.add_argument("--n-layers", type=int, default=None, help="depth of models that do not set one (defaults.n_layers)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--store", default=None, help="results database (default ssmlab-results/results.sqlite "
                                                  "or $SSMLAB_STORE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train one mixer on one task and record the run")
    p.add_argument("mixer")
    p.add_argument("task")
    p.add_argument("--seed", type=int, default=0)
    _add_training_options(p)
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="a task option, e.g. n_train=512 or seq_len=128 (repeatable)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="a model option, e.g. pooling=last or mixer_options={d_state: 8} (repeatable)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast (default fp32)")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning rate after warmup (default cosine)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: at the end)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after N evaluations without improvement (needs --eval-every; default: never)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="write checkpoints here and resume from the latest one when started again")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="continue a prompt with a Mamba / Mamba-2 checkpoint",
                       description="Load a Hugging Face or mamba_ssm checkpoint directory and continue the prompt. "
                                   "Uses tokenizer.json from the directory if there is one, else byte-level tokens.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + weights)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding (default 1.0)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("report", help="tables and figures from the results store: terminal, Markdown, CSV, HTML",
                       description="Build the leaderboards (mean and std over seeds, best marked), learning curves, "
                                   "metric against length and efficiency plots from the results store alone.")
    p.add_argument("--store", default=None, help="results database (default ssmlab-results/results.sqlite "
                                                  "or $SSMLAB_STORE)")
    p.add_argument("--out", default=None, help="output folder (default: 'report' beside the store)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("efficiency", help="time, throughput and memory of mixers against sequence length",
                       description="Measure forward and forward+backward time, tokens/s and peak memory of each "
                                   "mixer at equal width, fit time ~ L^k and find where each overtakes attention.")
    p.add_argument("mixers", help="comma-separated mixer names, e.g. attention,mamba,s4d")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096], help="sequence lengths")
    p.add_argument("--d-model", type=int, default=128, help="width of every mixer (default 128)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point; the median is kept (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--forward-only", action="store_true", help="skip the forward+backward timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--mixer-option", action="append", metavar="MIXER.OPTION=VALUE",
                   help="an option of one mixer, e.g. hyena.l_max=8192 (repeatable)")
    p.add_argument("--store", default=None, help="results database (default ssmlab-results/results.sqlite "
                                                  "or $SSMLAB_STORE)")
    p.set_defaults(func=_cmd_efficiency)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UnknownNameError as exc:
        print(f"ssmlab: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, ImportError) as exc:  # ImportError: a data source to install
        print(f"ssmlab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
