"""Experiments: YAML files naming models, tasks, seeds and trainer settings.

An experiment (or a suite, which is an experiment shipped with the package
under ``ssmlab/suites/``) looks like::

    name: my-comparison
    description: Mamba against attention on recall
    defaults: {d_model: 64, n_layers: 2}      # for every model that does not say
    models:
      - mamba                                 # a registered mixer, or "*" for every one
      - {mixer: attention, options: {mixer_options: {n_heads: 2}}}
      - {mixer: [mamba, mamba, attention], d_model: 96}   # a hybrid stack
      - {mixer: mamba, name: mamba-wide, d_model: 128}     # a second mamba, named apart in the results
    tasks:
      - mqar                                  # a registered task with its defaults
      - {name: mqar, options: {seq_len: 256, num_kv_pairs: 16}}
      - {name: ucr-gunpoint, trainer: {steps: 100}}        # its own trainer settings, over those below
    seeds: [0, 1, 2]
    trainer: {steps: 2000, lr: 1e-3, batch_size: 64}

The protocol is the one Zoology (arXiv 2312.04927) uses to compare architectures
fairly: every model of an experiment gets the same data, steps, batch size and
schedule, and with ``trainer: {lr_grid: [3.0e-4, 1.0e-3, 3.0e-3]}`` the same
learning-rate sweep. Each value of the grid is one trial per model, task and
seed, recorded in the store like any run (its ``run.lr_grid`` says which sweep
it belongs to, ``run.train_options.lr`` its learning rate). The report chooses,
for each model and task, the learning rate whose mean validation metric over the
seeds is best (in the task's direction; ties go to the lower validation loss),
and reports the test metric of that choice, with its mean and spread over the
seeds; the test split never takes part in the choice. A task may set its own
grid (``tasks: [{name: mqar, trainer: {lr_grid: [...]}}]``), shared by every
model on it, or a single ``lr``, which overrides the experiment's grid.

``param_budget: 50000`` matches models to a parameter budget: each model that
does not set its own ``d_model`` gets, on each task, the largest width of
``d_model_grid`` (default 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) whose
parameter count (head and embeddings included, as built for that task) is at
most the budget; the smallest width when none fits. Runs record the budget, and
the report names rows by it rather than by the width it gave.

``jobs: 2`` runs two runs of the suite at a time on this machine, each in its own
process (``jobs: auto``: one per CPU core on the CPU, one on an accelerator; the
default is one run after another); ``ssmlab run --jobs N`` overrides it. Small
models use one core better than two (their operations are too small to split),
so the quick suite runs one per core.

``--set key=value`` overrides any entry by its dotted path
(``trainer.lr=3e-4``, ``seeds=[0,1]``, ``defaults.d_model=128``,
``tasks=[mqar]``); the value is read as YAML, and every key and value is
type-checked against the dataclasses below and the trainer's ``TrainConfig``:
an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ssmlab import registry
from ssmlab.config import ConfigError, check_options as check_against, constructor_options, from_dict
from ssmlab.mixers import is_causal
from ssmlab.models.backbone import Backbone, check_mixer_options
from ssmlab.tasks import create_task
from ssmlab.train.trainer import TrainConfig


@dataclass
class ModelSpec:
    """One model: a mixer name ("*" for every registered mixer) or a list of names (a hybrid stack)."""

    mixer: str | list[str]
    d_model: int | None = None
    n_layers: int | None = None
    options: dict = field(default_factory=dict)  # passed to create_model (mixer_options, mlp, pooling, ...)
    name: str | None = None  # how results name this model (default: the mixer); tells apart two of one mixer


@dataclass
class TaskSpec:
    name: str
    options: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)  # trainer settings for this task's runs, over the experiment's
    lr_grid: list[float] | None = None  # this task's learning-rate grid (read from trainer.lr_grid)


@dataclass
class Defaults:
    """Width and depth of the models of an experiment that do not set their own."""

    d_model: int = 64
    n_layers: int = 2


@dataclass
class RunSpec:
    """One run of an experiment: one model on one task with one seed (what :func:`expand` makes)."""

    mixer: str | list[str]  # a list is a hybrid stack, one mixer per layer
    task: str
    seed: int = 0
    task_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    d_model: int = Defaults.d_model
    n_layers: int = Defaults.n_layers
    label: str | None = None  # the model's name in the results (default: the mixer, or mixers joined by +)
    train_options: dict = field(default_factory=dict)  # trainer settings of this run over the sweep's
    # The learning-rate grid this run is one trial of (its own lr is train_options["lr"]); None: no sweep.
    # The report chooses among the trials of one grid on the validation split (ssmlab.report.leaderboard).
    lr_grid: list[float] | None = None
    param_budget: int | None = None  # the parameter budget d_model was chosen for (see param_budget above)


@dataclass
class Experiment:
    name: str
    models: list[ModelSpec]
    tasks: list[TaskSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    trainer: dict = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)
    description: str = ""
    lr_grid: list[float] | None = None  # the learning-rate grid of every task (read from trainer.lr_grid)
    param_budget: int | None = None  # match each model's d_model to this many parameters
    d_model_grid: list[int] = field(default_factory=lambda: list(D_MODEL_GRID))
    jobs: int | str | None = None  # runs at a time on this machine: a number, "auto" (one per core), None: one


# The widths a parameter budget chooses from.
D_MODEL_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def suite_names() -> list[str]:
    """The suites that ship with ssmlab (``ssmlab/suites/*.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files("ssmlab.suites").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a YAML mapping with keys name, models, tasks, ...; got "
                          f"{type(data).__name__}")
    return data


def load_raw(source: str) -> tuple[dict, str]:
    """The mapping of a shipped suite (by name) or of a YAML file (by path), and where it came from."""
    if source in suite_names():
        text = resources.files("ssmlab.suites").joinpath(f"{source}.yaml").read_text()
        return _read_yaml(text, f"suite {source!r}"), f"suite {source!r}"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{source!r} is neither a shipped suite ({', '.join(suite_names())}) nor a YAML file")
    return _read_yaml(path.read_text(), str(path)), str(path)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values read as YAML) to a copy of ``raw``."""
    import yaml

    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {text!r} is not a valid YAML value ({exc})") from exc
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set: bad key {key!r}")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def _normalise_list(raw: dict, key: str, name_field: str) -> list:
    items = raw.get(key)
    if items is None:
        raise ConfigError(f"experiment needs a {key!r} list")
    if isinstance(items, (str, dict)):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"experiment: {key!r} must be a non-empty list, got {items!r}")
    return [{name_field: item} if isinstance(item, (str, list)) else item for item in items]


def parse(raw: dict, origin: str = "experiment") -> Experiment:
    """Type-check a raw mapping into an :class:`Experiment`; names are checked against the registry."""
    raw = dict(raw)
    raw["models"] = _normalise_list(raw, "models", "mixer")
    raw["tasks"] = _normalise_list(raw, "tasks", "name")
    raw.setdefault("name", Path(origin).stem if origin.endswith((".yaml", ".yml")) else "experiment")
    try:
        models = [from_dict(ModelSpec, m) for m in raw["models"]]
        tasks = [from_dict(TaskSpec, t) for t in raw["tasks"]]
        defaults = from_dict(Defaults, raw.get("defaults"))
        exp = from_dict(Experiment, {**raw, "models": models, "tasks": tasks, "defaults": defaults})
        exp.lr_grid = _lr_grid(exp.trainer.pop("lr_grid", None), exp.lr_grid, "trainer.lr_grid")
        # Every trainer key and value checked now, not at the first run; values kept as coerced.
        checked = from_dict(TrainConfig, exp.trainer)
        exp.trainer = {k: getattr(checked, k) for k in exp.trainer}
        for t in exp.tasks:
            t.lr_grid = _lr_grid(t.trainer.pop("lr_grid", None), t.lr_grid, f"task {t.name}: trainer.lr_grid")
            checked = from_dict(TrainConfig, {**exp.trainer, **t.trainer})
            t.trainer = {k: getattr(checked, k) for k in t.trainer}
        if exp.param_budget is not None and exp.param_budget < 1:
            raise ConfigError(f"param_budget must be a positive number of parameters, got {exp.param_budget}")
        if exp.jobs is not None and exp.jobs != "auto" and not (isinstance(exp.jobs, int) and exp.jobs >= 1):
            raise ConfigError(f"jobs must be a positive number of runs at a time or 'auto', got {exp.jobs!r}")
        if not exp.d_model_grid or any(d < 1 for d in exp.d_model_grid):
            raise ConfigError(f"d_model_grid must be a non-empty list of positive widths, got {exp.d_model_grid}")
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if not exp.seeds:
        raise ConfigError(f"{origin}: seeds is empty; give at least one seed, e.g. seeds: [0]")
    if len(set(exp.seeds)) != len(exp.seeds):
        raise ConfigError(f"{origin}: seeds {exp.seeds} repeat a seed; each seed once")
    check_label(exp.name, f"{origin}: name")
    for m in exp.models:
        if m.name is not None:
            check_label(m.name, f"{origin}: model name")
        for name in ([m.mixer] if isinstance(m.mixer, str) else m.mixer):
            if name != "*":
                registry.get("mixer", name)
    for t in exp.tasks:
        registry.get("task", t.name)
    return exp


def _lr_grid(given, current, where: str) -> list[float] | None:
    """A learning-rate grid as a list of distinct positive floats, in the order given; None for none."""
    if given is None:
        return current
    if not isinstance(given, (list, tuple)) or not given:
        raise ConfigError(f"{where}: expected a non-empty list of learning rates, got {given!r}")
    grid = []
    for value in given:
        try:
            lr = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a learning rate") from None
        if not lr > 0:
            raise ConfigError(f"{where}: learning rates must be positive, got {value!r}")
        if lr in grid:
            raise ConfigError(f"{where}: {value!r} appears twice")
        grid.append(lr)
    return grid


def task_lr_grid(exp: Experiment, task: TaskSpec) -> list[float] | None:
    """The learning rates every model is trained with on ``task``: the task's grid, else none when the
    task sets its own ``lr``, else the experiment's grid; None means the one ``lr`` of the trainer."""
    if task.lr_grid is not None:
        return task.lr_grid
    if "lr" in task.trainer:
        return None
    return exp.lr_grid


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}")


def check_label(label: str, what: str = "name") -> str:
    """A suite or model name becomes part of file names under the store's folder (checkpoints,
    figures): letters, digits and ``_ . + = -``, starting with a letter or digit, at most 100
    characters, so that no name reaches outside that folder."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or ".." in label:
        raise ConfigError(f"{what} {label!r} is not allowed: use letters, digits and _ . + = - (no '/', no '..', "
                          f"starting with a letter or digit, at most 100 characters)")
    return label


def load(source: str, overrides: list[str] = ()) -> Experiment:
    raw, origin = load_raw(source)
    return parse(apply_overrides(raw, list(overrides)), origin)


def model_label(spec: RunSpec) -> str:
    """How results name the model of ``spec``: its label, else the mixer, or the mixers joined by +."""
    if spec.label:
        return spec.label
    return spec.mixer if isinstance(spec.mixer, str) else "+".join(spec.mixer)


def check_options(spec: RunSpec) -> None:
    """Check the task, model and mixer options of ``spec`` against the constructors' signatures
    before anything is built: an unknown option is a ``ConfigError`` that lists the valid ones in
    one line, and an annotated option of the wrong type is one too. So a sweep stops before it
    writes a run, not at the run, and an error inside a constructor stays that error."""
    task_cls = registry.get("task", spec.task).obj
    task_options = constructor_options(task_cls)
    task_options.pop("seed")  # the run's seed
    check_against(spec.task_options, task_options, f"task {spec.task}")
    owner = f"model {model_label(spec)}"
    from_task = create_task(spec.task, seed=spec.seed, **spec.task_options).model_options()
    given_by_task = sorted(set(spec.model_options) & set(from_task))
    if given_by_task:
        raise ConfigError(f"{owner}: task {spec.task} sets {', '.join(given_by_task)}; leave it out of the model "
                          f"options")
    valid = {**constructor_options(Backbone), **constructor_options(registry.get("model", task_cls.head).obj)}
    for key in ("mixer", "d_model", "n_layers", *from_task):
        valid.pop(key, None)
    check_against(spec.model_options, valid, owner)
    mixer_options = spec.model_options.get("mixer_options")
    if mixer_options is None:
        return
    if not isinstance(mixer_options, dict):
        raise ConfigError(f"{owner}: mixer_options must be a mapping of option: value, got {mixer_options!r}")
    names = [spec.mixer] if isinstance(spec.mixer, str) else list(dict.fromkeys(spec.mixer))
    per_name = {spec.mixer: mixer_options} if isinstance(spec.mixer, str) else mixer_options
    for name in names:
        options = per_name.get(name) or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{owner}: mixer_options.{name} must be a mapping, got {options!r}")
        check_mixer_options(name, options)


def _not_causal(mixer: str | list[str], d_model: int, options: dict) -> bool:
    """Whether a mixer of the model, built with its ``mixer_options`` (keyed by name for a hybrid
    stack, as :class:`~ssmlab.models.Backbone` reads them), is not causal. A mixer that cannot be
    built with those options is not judged here: its run reports the error."""
    names = [mixer] if isinstance(mixer, str) else list(dict.fromkeys(mixer))
    given = options.get("mixer_options") or {}
    per_name = {mixer: given} if isinstance(mixer, str) else given
    for name in names:
        try:
            check_mixer_options(name, per_name.get(name, {}))
            if not is_causal(registry.get("mixer", name).obj, d_model, **per_name.get(name, {})):
                return True
        except ValueError:
            continue
    return False


def expand(exp: Experiment) -> list[RunSpec]:
    """The runs of an experiment: tasks x models x learning rates x seeds, in that order.

    With a learning-rate grid (:func:`task_lr_grid`), each model has one run per value of
    the grid and seed, its ``train_options["lr"]`` the value and its ``lr_grid`` the grid.
    With a ``param_budget``, each model that sets no ``d_model`` gets the width
    :func:`budget_d_model` chooses for it on that task.

    ``"*"`` stands for every registered mixer that can run on the task. A model that is not
    causal (a bidirectional mixer, or one built with ``bidirectional=True`` in its
    ``mixer_options``; direction is read from the mixers as built, :func:`ssmlab.mixers.is_causal`)
    is left out of tasks with a language-model head, where it would see the tokens it predicts,
    also when it is named explicitly. With ``"*"``, a mixer over images (registered with
    ``inputs="image"``: S4ND, cross-scan) is left out of tasks that give no ``image_shape``.
    :func:`left_out` says which and why.
    """
    return _expand(exp)[0]


def left_out(exp: Experiment) -> list[str]:
    """One line per task and reason naming the models left out of it, for the run listing."""
    return [f"leaving out {', '.join(mixers)} on {task}: {reason}"
            for (_, task, reason), mixers in _expand(exp)[1].items()]


def _expand(exp: Experiment) -> tuple[list[RunSpec], dict[tuple[int, str, str], list[str]]]:
    runs, skipped = [], {}
    for i, t in enumerate(exp.tasks):
        task_cls = registry.get("task", t.name).obj
        # Whether the task gives an image_shape: asked once, and only by an image mixer (creating a task reads no data).
        image_task = functools.cache(lambda t=t: "image_shape" in create_task(t.name, **t.options).model_options())
        for m in exp.models:
            names = registry.names("mixer") if m.mixer == "*" else [m.mixer]
            for mixer in names:
                if task_cls.head == "lm" and _not_causal(mixer, m.d_model or exp.defaults.d_model, m.options):
                    reason = "not causal, and on a language-model task a mixer must not see the tokens it predicts"
                    skipped.setdefault((i, t.name, reason), []).append(m.name or mixer)
                    continue
                if m.mixer == "*" and registry.get("mixer", mixer).extra["inputs"] == "image" and not image_task():
                    reason = "image mixers (registered with inputs='image') need a task that gives an image_shape"
                    skipped.setdefault((i, t.name, reason), []).append(mixer)
                    continue
                n_layers = m.n_layers or exp.defaults.n_layers
                d_model, budget = m.d_model or exp.defaults.d_model, None
                if exp.param_budget is not None and m.d_model is None:
                    budget = exp.param_budget
                    d_model = budget_d_model(mixer, t.name, t.options, m.options, n_layers=n_layers,
                                             budget=budget, grid=tuple(exp.d_model_grid))
                grid = task_lr_grid(exp, t)
                trials = [{"lr": lr} for lr in grid] if grid else [{}]
                for trial in trials:
                    for seed in exp.seeds:
                        runs.append(RunSpec(mixer, t.name, seed, dict(t.options), dict(m.options), d_model=d_model,
                                            n_layers=n_layers, label=m.name, train_options={**t.trainer, **trial},
                                            lr_grid=list(grid) if grid else None, param_budget=budget))
    return runs, skipped


def parameter_count(mixer, task: str, task_options: dict, model_options: dict, *, d_model: int,
                    n_layers: int) -> int:
    """The parameter count of ``mixer`` built for ``task`` (head and embeddings included) at this width."""
    import torch

    from ssmlab.models import create_model
    from ssmlab.tasks import create_task

    task_obj = create_task(task, **task_options)
    with torch.device("meta"):
        try:
            model = create_model(mixer, head=task_obj.head, d_model=d_model, n_layers=n_layers,
                                 **task_obj.model_options(), **model_options)
        except (NotImplementedError, RuntimeError):
            model = None
    if model is None:  # a mixer whose initialisation computes on its tensors: built on the CPU instead
        model = create_model(mixer, head=task_obj.head, d_model=d_model, n_layers=n_layers,
                             **task_obj.model_options(), **model_options)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=1024)
def _budget_d_model(mixer, task, task_options, model_options, n_layers, budget, grid) -> int:
    import json

    fitting, smallest = None, None
    for d_model in sorted(grid):
        try:
            count = parameter_count(mixer if isinstance(mixer, str) else list(mixer), task,
                                    json.loads(task_options), json.loads(model_options),
                                    d_model=d_model, n_layers=n_layers)
        except (TypeError, ValueError):  # a width this mixer does not take (heads that do not divide it, ...)
            continue
        smallest = d_model if smallest is None else smallest
        if count <= budget:
            fitting = d_model
    if smallest is None:
        name = mixer if isinstance(mixer, str) else "+".join(mixer)
        raise ConfigError(f"no width of {list(grid)} builds {name} for {task}")
    return fitting if fitting is not None else smallest


def budget_d_model(mixer, task: str, task_options: dict, model_options: dict, *, n_layers: int, budget: int,
                   grid=D_MODEL_GRID) -> int:
    """The largest ``d_model`` of ``grid`` at which ``mixer`` on ``task`` has at most ``budget``
    parameters; the smallest width that builds when none fits."""
    import json

    key = mixer if isinstance(mixer, str) else tuple(mixer)
    return _budget_d_model(key, task, json.dumps(task_options, sort_keys=True),
                           json.dumps(model_options, sort_keys=True), n_layers, budget, tuple(grid))

