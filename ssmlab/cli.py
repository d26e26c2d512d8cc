"""The ``ssmlab`` command: list what is registered, train, run suites, print leaderboards."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssmlab import registry
from ssmlab.config import ConfigError
from ssmlab.experiment import suite_names
from ssmlab.registry import UnknownNameError



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


def _check_device(device: str | None) -> None:
    """A device torch cannot use here is an error before anything runs or is written."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r} is not a torch device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build sees no CUDA device; use --device cpu, or install a "
                         f"CUDA build of torch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def _cmd_run(args) -> int:
    from ssmlab import experiment
    from ssmlab.report import build_report, format_table, leaderboard
    from ssmlab.store import ResultStore
    from ssmlab.tasks import create_task, missing_source
    from ssmlab.tasks.base import task_metric
    from ssmlab.train.sweep import execute_sweep, plan

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
    for line in experiment.left_out(exp):
        print(line, file=sys.stderr, flush=True)
    if args.executor == "ray" and args.address:
        from ssmlab.train.sweep import check_ray_address

        check_ray_address(args.address)
    specs, config = _runs(exp, args, f"fix the options of {exp.name}")
    started = time.perf_counter()
    finished, failures, elsewhere = 0, [], 0
    with ResultStore(args.store) as store:
        print(f"suite {exp.name}: {len(specs)} runs, results in {store.path}", flush=True)
        todo, done = plan(specs, config, store, suite=exp.name)
        for spec, run_id in done:
            print(f"{_label(spec)}: already finished as run {run_id}, skipped", flush=True)
        # Each run checkpoints under the store's folder (every trainer.checkpoint_every steps and at
        # the end), so a sweep started again resumes its unfinished runs.
        checkpoints = store.path.parent / "checkpoints" / exp.name
        if args.executor == "ray":
            from ssmlab.train.sweep import execute_ray

            print(f"sending {len(todo)} runs to Ray ({args.address or 'a local instance'})", flush=True)
            outcomes = execute_ray(todo, config, store, suite=exp.name, address=args.address,
                                   checkpoint_root=checkpoints)
        else:
            from ssmlab.train.sweep import default_jobs, execute_parallel

            jobs = args.jobs or (default_jobs(config.device) if exp.jobs == "auto" else exp.jobs or 1)
            jobs = min(jobs, max(1, len(todo)))
            if jobs > 1:
                print(f"running {jobs} runs at a time in worker processes (--jobs)", flush=True)
                outcomes = execute_parallel(todo, config, store, suite=exp.name, jobs=jobs,
                                            checkpoint_root=checkpoints)
            else:
                outcomes = execute_sweep(todo, config, store, suite=exp.name, checkpoint_root=checkpoints)
        for i, out in enumerate(outcomes, 1):
            prefix = f"[{i}/{len(todo)}] {_label(out.spec)}"
            if out.status == "failed":
                failures.append((out.spec, out.run_id, out.detail))
                print(f"{prefix}: failed: {out.detail}", flush=True)
            elif out.status == "skipped":
                elsewhere += 1
                state = "already finished" if out.detail == "finished" else "running in another process"
                print(f"{prefix}: {state} as run {out.run_id}, skipped", flush=True)
            else:
                metric = f"test_{task_metric(out.spec.task)[0]}"
                print(f"{prefix}: {metric} {out.metrics.get(metric, float('nan')):.3f} in {out.wall_time_s:.1f}s", flush=True)
                finished += 1
        skipped = len(done) + elsewhere
        print(f"\nfinished {finished} runs in {time.perf_counter() - started:.0f}s"
              + (f" ({skipped} already in the store)" if skipped else "")
              + (f"; {len(failures)} failed" if failures else "") + "\n")
        print(format_table(leaderboard(store, suite=exp.name)))
        paths = build_report(store, args.report_dir or store.path.parent / "report")
    print(f"\nreport: {paths['html']}")
    if failures:
        print(f"{len(failures)} of {len(todo)} runs failed:", file=sys.stderr)
        for spec, run_id, reason in failures:
            print(f"  run {run_id}, {_label(spec)}: {reason}", file=sys.stderr)
        sys.stderr.flush()
    return min(len(failures), 100)


def _label(spec) -> str:
    from ssmlab.experiment import model_label

    trial = f", lr {spec.train_options['lr']:g}" if spec.lr_grid else ""
    return f"{model_label(spec)} on {spec.task} (seed {spec.seed}{trial})"


def _runs(exp, args, fix: str):
    """The runs of experiment ``exp`` and their trainer config, every option checked before anything
    is built or recorded: the one path of ``ssmlab run`` and ``ssmlab train`` from an experiment to
    runs. ``--device`` and ``--no-progress`` go over the experiment's trainer settings; ``fix`` says
    where to fix a bad option."""
    from ssmlab import experiment
    from ssmlab.config import from_dict
    from ssmlab.train.trainer import TrainConfig

    specs = experiment.expand(exp)
    trainer = dict(exp.trainer)
    if args.device is not None:
        trainer["device"] = args.device
    if args.no_progress:
        trainer["progress"] = False
    config = from_dict(TrainConfig, trainer)
    _check_device(config.device)
    for spec in specs:
        try:
            experiment.check_options(spec)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {fix}") from exc
    return specs, config


# `ssmlab train`'s options that are TrainConfig fields, by their names there.
_TRAIN_FLAGS = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "grad_accum": "grad_accum_steps",
                "precision": "precision", "schedule": "schedule", "eval_every": "eval_every",
                "patience": "early_stopping_patience", "checkpoint_dir": "checkpoint_dir",
                "checkpoint_every": "checkpoint_every"}


def _train_experiment(args):
    """``ssmlab train``'s one run as an experiment of one model, one task and one seed: the quick
    suite's trainer settings, model width and depth, and its options for the tasks it has, with
    the command line's over them."""
    from ssmlab import experiment

    names = _csv(args.mixer)
    quick, _ = experiment.load_raw("quick")
    defaults = dict(quick.get("defaults") or {})
    for key in ("d_model", "n_layers"):
        if getattr(args, key) is not None:
            defaults[key] = getattr(args, key)
    n_layers = defaults.get("n_layers", experiment.Defaults.n_layers)
    if len(names) > 1 and n_layers % len(names):
        raise ValueError(f"a hybrid pattern of {len(names)} mixers ({args.mixer}) needs --n-layers a multiple of "
                         f"{len(names)}, got {n_layers}")
    quick_options = {t["name"]: t.get("options", {}) for t in quick["tasks"] if isinstance(t, dict)}
    task = {"name": args.task,
            "options": {**quick_options.get(args.task, {}), **_key_values(args.task_option, "--task-option")}}
    model = {"mixer": names[0] if len(names) == 1 else names * (n_layers // len(names)),
             "options": _key_values(args.model_option, "--model-option")}
    trainer = dict(quick.get("trainer") or {})
    trainer.pop("lr_grid", None)  # one run, at the suite's lr or the command line's
    trainer.update({field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items()
                    if getattr(args, flag) is not None})
    return experiment.parse({"name": "train", "models": [model], "tasks": [task], "seeds": [args.seed],
                             "trainer": trainer, "defaults": defaults}, "ssmlab train")


def _cmd_train(args) -> int:
    from ssmlab import experiment
    from ssmlab.models import create_model
    from ssmlab.store import ResultStore
    from ssmlab.tasks import create_task
    from ssmlab.train import distributed
    from ssmlab.train.sweep import execute, failure_reason, train_spec

    exp = _train_experiment(args)
    specs, config = _runs(exp, args, "fix --task-option or --model-option")
    if not specs:
        raise ValueError("; ".join(experiment.left_out(exp)).replace("leaving out", "cannot train", 1))
    (spec,) = specs
    # The task and the model built once before anything is recorded, so that a value a constructor
    # rejects is an error here and not a failed run in the store.
    try:
        task = create_task(spec.task, seed=spec.seed, **spec.task_options)
        create_model(spec.mixer, head=task.head, d_model=spec.d_model, n_layers=spec.n_layers,
                     **task.model_options(), **spec.model_options)
    except ValueError as exc:
        raise ValueError(f"{args.mixer} on {args.task} cannot be built with these options ({exc}); "
                         f"check --model-option and --task-option") from exc
    if distributed.rank() != 0:  # under torchrun only rank 0 records the run
        train_spec(spec, config)
        return 0
    with ResultStore(args.store) as store:
        try:
            run_id = execute(spec, config, store, suite="train", save_dir=args.save)
        except Exception as exc:
            raise RuntimeError(f"the run failed, recorded as failed in {store.path}: {failure_reason(exc)}") from exc
        run = store.run(run_id)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(run["metrics"].items()))
    print(f"run {run_id}: {args.mixer} on {args.task}: {metrics} ({run['wall_time_s']:.1f}s, "
          f"{run['n_params']:,} parameters)")
    if args.save:
        print(f"model saved to {args.save} (ssmlab.load_pretrained or ssmlab generate --checkpoint read it)")
    return 0


def _cmd_generate(args) -> int:
    import torch

    from ssmlab.interop import load_pretrained
    from ssmlab.interop.tokenization import tokenizer_for

    if not Path(args.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint} is not a directory; pass a directory written by "
                         f"save_pretrained or ssmlab train --save, or a Hugging Face or mamba_ssm checkpoint")
    try:
        model = load_pretrained(args.checkpoint, device=args.device)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as exc:
        from ssmlab.train.sweep import failure_reason

        raise ValueError(f"{args.checkpoint} is not a checkpoint ssmlab can read ({failure_reason(exc)}); pass a "
                         f"directory written by save_pretrained or ssmlab train --save, or a Hugging Face or "
                         f"mamba_ssm checkpoint") from exc
    if not hasattr(model, "generate_tokens"):
        raise ValueError(f"{args.checkpoint} holds a {model.config.get('head')!r} model; generate needs a language "
                         f"model (head 'lm')")
    if not model.backbone.causal:
        raise ValueError(f"{args.checkpoint} holds a bidirectional model; generate needs a causal one")
    tokenizer = tokenizer_for(args.checkpoint, model)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt is empty after tokenisation")
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    text = tokenizer.stream(ids)
    sys.stdout.write(text.start())
    sys.stdout.flush()
    started, count = time.perf_counter(), 0
    tokens = model.generate_tokens(torch.tensor([ids], device=args.device), args.max_new_tokens,
                                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                   generator=generator)
    for token in tokens:
        count += 1
        sys.stdout.write(text.push(int(token[0])))
        sys.stdout.flush()
    elapsed = time.perf_counter() - started
    sys.stdout.write(text.end() + "\n")
    sys.stdout.flush()
    rate = f"{count / elapsed:.1f}" if elapsed > 0 else "inf"
    print(f"{count} tokens in {elapsed:.2f}s: {rate} tokens/s", file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from ssmlab.report import build_report, format_table
    from ssmlab.report.build import suite_tables
    from ssmlab.store import ResultStore, default_path

    path = Path(args.store) if args.store else default_path()
    if not path.is_file():
        raise ValueError(f"no results store at {path}; run `ssmlab run` first or pass --store")
    out = Path(args.out) if args.out else path.parent / "report"
    with ResultStore(path, read_only=True) as store:
        for board in suite_tables(store):
            print(f"suite {board['suite']}")
            print(format_table(board) + "\n")
        try:
            paths = build_report(store, out, figures=not args.no_figures)
        except OSError as exc:
            raise ValueError(f"cannot write the report to {out} ({exc.strerror or exc}); pass a writable folder "
                             f"with --out") from exc
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
    _check_device(args.device)
    from ssmlab.models.backbone import create_mixer
    from ssmlab.train.sweep import failure_reason

    for name in mixers:  # every option checked by building each mixer once, before the store is opened
        try:
            create_mixer(name, args.d_model, **options.get(name, {}))
        except ValueError as exc:
            raise ValueError(f"{name} cannot be built with d_model={args.d_model} and options "
                             f"{options.get(name, {})} ({failure_reason(exc)}); check --mixer-option and "
                             f"--d-model") from exc
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
    """``ssmlab train``'s options. Their defaults are not repeated here: what is not given comes from
    the quick suite (steps, batch size, lr, width, depth) or from ``TrainConfig`` (the rest)."""
    from ssmlab.experiment import load_raw
    from ssmlab.train.trainer import PRECISIONS, SCHEDULES, TrainConfig

    quick, _ = load_raw("quick")
    trainer, defaults = quick.get("trainer") or {}, quick.get("defaults") or {}
    p.add_argument("--steps", type=_positive,
                   help=f"optimiser steps (default {trainer.get('steps')}, the quick suite's)")
    p.add_argument("--batch-size", type=_positive, help=f"batch size (default {trainer.get('batch_size')})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {trainer.get('lr')})")
    p.add_argument("--d-model", type=_positive, help=f"model width (default {defaults.get('d_model')})")
    p.add_argument("--n-layers", type=_positive, help=f"number of blocks (default {defaults.get('n_layers')})")
    p.add_argument("--device", help=f"torch device (default {TrainConfig.device})")
    _add_store_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="a task option, e.g. n_train=512 or seq_len=128 (repeatable)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="a model option, e.g. pooling=last or mixer_options={d_state: 8} (repeatable)")
    p.add_argument("--grad-accum", type=_positive,
                   help=f"micro-batches per optimiser step (default {TrainConfig.grad_accum_steps})")
    p.add_argument("--precision", choices=PRECISIONS, help=f"bf16: autocast (default {TrainConfig.precision})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning rate after warmup (default {TrainConfig.schedule})")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (default: at the end)")
    p.add_argument("--patience", type=int,
                   help="stop after N evaluations without improvement (needs --eval-every; default: never)")
    p.add_argument("--checkpoint-dir", help="write checkpoints here and resume from the latest one when started again")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (and at the end)")


def _add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="results database (default ssmlab-results/results.sqlite "
                                                  "or $SSMLAB_STORE)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong, and where to read the options), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", _Parser)
        return super().add_subparsers(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssmlab", description="State space sequence models: list, train, compare.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --debug is also accepted after the command; SUPPRESS keeps the subparser from resetting it.
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")

    p = sub.add_parser("list", parents=[debug], help="list registered mixers, tasks and models")
    p.add_argument("kind", nargs="?", choices=["mixers", "tasks", "models"], help="only this kind")
    p.add_argument("--pattern", default="*", help="glob on names (default *)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", parents=[debug], help="train a suite of mixers x tasks and print the leaderboard",
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
                   help="run on this machine (default; --jobs runs at a time) or on a Ray cluster (needs ssmlab[ray])")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--jobs", type=_positive, default=None,
                   help="runs at a time with the local executor, each in its own process (default: the suite's "
                        "jobs; 'auto' there is one per CPU core on the CPU; --jobs 1 runs them one after another here)")
    p.add_argument("--steps", type=_positive, default=None, help="optimiser steps per run (trainer.steps)")
    p.add_argument("--batch-size", type=_positive, default=None, help="batch size (trainer.batch_size)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (trainer.lr); replaces the suite's learning-rate grid")
    p.add_argument("--d-model", type=_positive, default=None, help="width of models that do not set one (defaults.d_model)")
    p.add_argument("--n-layers", type=_positive, default=None, help="depth of models that do not set one (defaults.n_layers)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    _add_store_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", parents=[debug], help="train one mixer on one task and record the run")
    p.add_argument("mixer", help="a mixer, or a hybrid pattern of comma-separated mixers repeated over the layers "
                                 "(mamba,attention with --n-layers 4: mamba, attention, mamba, attention)")
    p.add_argument("task")
    p.add_argument("--seed", type=int, default=0)
    _add_training_options(p)
    p.add_argument("--save", default=None, metavar="DIR",
                   help="save the trained model to DIR (config.json + model.safetensors, with the task and its "
                        "tokeniser), for ssmlab.load_pretrained and ssmlab generate")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", parents=[debug], help="continue a prompt with a saved language model, streaming the tokens",
                       description="Load a checkpoint directory (written by save_pretrained or `ssmlab train --save`, "
                                   "or a transformers / mamba_ssm Mamba checkpoint) and continue the prompt, printing "
                                   "each token as it is made and the tokens per second (on stderr) at the end. The "
                                   "text is tokenised by tokenizer.json in the directory if there is one, else by the "
                                   "tokeniser of the task the model was saved with, else as bytes.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + weights)")
    p.add_argument("--prompt", required=True, help="the text to continue (token ids '3 17 5' for tasks without text)")
    p.add_argument("--max-new-tokens", type=_positive, default=50, help="tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of probability p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("report", parents=[debug], help="tables and figures from the results store: terminal, Markdown, CSV, HTML",
                       description="Build the leaderboards (mean and std over seeds, best marked), learning curves, "
                                   "metric against length and efficiency plots from the results store alone.")
    _add_store_option(p)
    p.add_argument("--out", default=None, help="output folder (default: 'report' beside the store)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("efficiency", parents=[debug], help="time, throughput and memory of mixers against sequence length",
                       description="Measure forward and forward+backward time, tokens/s and peak memory of each "
                                   "mixer at equal width, fit time ~ L^k and find where each overtakes attention.")
    p.add_argument("mixers", help="comma-separated mixer names, e.g. attention,mamba,s4d")
    p.add_argument("--lengths", type=_positive, nargs="+", default=[256, 1024, 4096], help="sequence lengths")
    p.add_argument("--d-model", type=_positive, default=128, help="width of every mixer (default 128)")
    p.add_argument("--batch-size", type=_positive, default=4, help="batch size (default 4)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed runs per point; the median is kept (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--forward-only", action="store_true", help="skip the forward+backward timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--mixer-option", action="append", metavar="MIXER.OPTION=VALUE",
                   help="an option of one mixer, e.g. hyena.l_max=8192 (repeatable)")
    _add_store_option(p)
    p.set_defaults(func=_cmd_efficiency)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return _interrupted()
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _interrupted()
    except UnknownNameError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return 2
    except Exception as exc:
        if args.debug:
            raise
        _error(_message(exc))
        return 1


def _interrupted() -> int:
    print("ssmlab: interrupted; a run in progress is recorded as interrupted, and the same command started "
          "again resumes the sweep", file=sys.stderr, flush=True)
    return 130


def _message(exc: BaseException) -> str:
    """What to print for an error: its own message where it is one of ours or names the problem,
    with the exception's type where it is not (e.g. a bug), and how to see the traceback."""
    import sqlite3

    from ssmlab.config import ConfigError
    from ssmlab.store import StoreError

    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"the results store is damaged or unreadable ({text}); restore it from a copy, or pass another "
                f"file with --store")
    if isinstance(exc, (StoreError, ConfigError, ValueError, RuntimeError, ImportError)):
        return text or type(exc).__name__
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or text}; check the path and its permissions"
    return f"{type(exc).__name__}: {text} (run again with --debug for the traceback)"


def _error(text: str) -> None:
    print(f"ssmlab: error: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
