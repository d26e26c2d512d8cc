"""Saving and loading any model ssmlab builds, in ssmlab's format or in the published Mamba formats.

ssmlab's format is a directory with two files:

* ``config.json``: ``{"format": "ssmlab", "format_version": 1, "ssmlab_version": ...,
  "model": {...}, "task": {...}, "tokenizer": {...}}``. ``"model"`` holds the arguments of
  :func:`ssmlab.create_model` (``mixer``, a name or one name per layer for a hybrid stack;
  ``head``; ``d_model``; ``n_layers``; every option given, ``mixer_options`` included;
  ``dtype`` by name), exactly what ``model.config`` records. ``"task"`` (``name`` and
  ``options``) is the task the model was trained on, when known, and ``"tokenizer"`` how
  text becomes tokens for a language model: ``{"type": "bytes"}`` (token ``t`` is byte
  ``t``, the byte-level tasks such as ``shakespeare-char``) or ``{"type": "ids"}`` (the
  task's tokens are ids with no text, as in the synthetic tasks). Tuples are written as
  ``{"__tuple__": [...]}`` so that they come back as tuples.
* ``model.safetensors``: the state dict. Tensors shared by several names (the tied
  embedding and output projection) are stored once, under one name, and shared again
  when the model is rebuilt by ``create_model``.

Loading reads JSON and safetensors only: nothing is unpickled. (The mamba_ssm format
stores ``pytorch_model.bin``, which is read with ``torch.load(weights_only=True)``,
the restricted loader that accepts tensors and plain containers only.)

Which format :func:`save_pretrained` writes, ``format=``:

* ``"auto"`` (default): the transformers format (``MambaForCausalLM`` /
  ``Mamba2ForCausalLM``) when the model maps onto it, that is a language model whose
  every block is a Mamba (or every block a Mamba-2) mixer without an MLP and with one
  norm epsilon (see :func:`ssmlab.interop.checkpoints.hf_unsupported`); otherwise ssmlab's.
* ``"hf"``: the transformers format, or a :class:`CheckpointError` saying in one line
  why this model cannot be written so.
* ``"ssmlab"``: ssmlab's format, for every model built by :func:`ssmlab.create_model`.

A transformers directory written here also carries, under the config key ``"ssmlab"``,
the task, the tokeniser and the ``create_model`` options that transformers has no field
for, so loading it back loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import ssmlab
from ssmlab.interop.checkpoints import CheckpointError, hf_unsupported, is_reference_config, load_reference, save_hf

FORMAT = "ssmlab"
FORMAT_VERSION = 1
FORMATS = ("auto", "hf", "ssmlab")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _encode(value, where: str):
    """``value`` as JSON-ready data, tuples tagged; anything JSON cannot hold is an error naming ``where``."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"cannot save {where}: its dict keys must be strings, got {list(value)}")
        return {k: _encode(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot save {where}={value!r}: a {type(value).__name__} has no JSON form")


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _model_config(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not {"mixer", "head", "d_model", "n_layers"} <= set(config):
        raise CheckpointError(f"this {type(model).__name__} was not built by ssmlab.create_model, so its options "
                              f"are not recorded; build it with ssmlab.create_model to save it")
    return config


def task_info(model: nn.Module, task=None) -> dict:
    """``{"task": ..., "tokenizer": ...}`` for config.json: from ``task`` (a Task or a task name)
    if given, else what the model was loaded with (``model.task_info``), else empty."""
    if task is None:
        return dict(getattr(model, "task_info", None) or {})
    if isinstance(task, str):
        from ssmlab.tasks import create_task

        task = create_task(task)
    config = getattr(model, "config", None) or {}
    if config.get("head", task.head) != task.head:
        raise ValueError(f"task {task.registry_name!r} needs the {task.head!r} head, this model has {config['head']!r}")
    for key, value in task.model_options().items():
        if key in config and config[key] != value:
            raise ValueError(f"task {task.registry_name!r} needs {key}={value!r}, this model has {config[key]!r}")
    info = {"task": {"name": task.registry_name, "options": task.options()}}
    if task.head == "lm":
        info["tokenizer"] = {"type": getattr(task, "tokenizer", None) or "ids"}
    return info


def save_pretrained(model: nn.Module, path, *, format: str = "auto", task=None) -> Path:
    """Write ``model`` to the directory ``path`` (created if needed); returns ``path``.

    ``format``: ``"auto"``, ``"hf"`` or ``"ssmlab"`` (see the module docstring). ``task`` (a
    Task or a registered task name) records what the model was trained on and, for a
    language model, its tokeniser, which ``ssmlab generate`` uses.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    info = _encode(task_info(model, task), "task")
    path = Path(path)
    if format == "hf" or (format == "auto" and hf_unsupported(model) is None):
        extra = {"ssmlab_version": ssmlab.__version__, **info}
        if isinstance(getattr(model, "config", None), dict):
            extra["model"] = _encode(model.config, "model")
        save_hf(model, path, extra=extra)
        return path
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "ssmlab_version": ssmlab.__version__,
              "model": _encode(_model_config(model), "model"), **info}
    from safetensors.torch import save_model

    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    with open(path / CONFIG_FILE, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def _load_ssmlab(path: Path, config: dict, *, dtype: torch.dtype | None) -> nn.Module:
    from safetensors.torch import load_file

    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config['format_version']} was written by a newer ssmlab "
                              f"({config.get('ssmlab_version')}); this one ({ssmlab.__version__}) reads up to "
                              f"{FORMAT_VERSION}")
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} beside config.json")
    options = _decode(config["model"])
    if dtype is not None:
        options["dtype"] = dtype
    model = ssmlab.create_model(**options)
    weights = load_file(path / WEIGHTS_FILE)
    tensors = model.state_dict(keep_vars=True)
    unexpected = sorted(set(weights) - set(tensors))
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(t.shape)}" for k, t in tensors.items()
                  if k in weights and weights[k].shape != t.shape]
    # A name missing from the file is fine only if it shares its tensor with a name that is there (tied weights).
    stored = {tensors[k].data_ptr() for k in weights if k in tensors and tensors[k].numel()}
    missing = sorted(k for k, t in tensors.items() if k not in weights and not (t.numel() and t.data_ptr() in stored))
    if unexpected or missing or mismatched:
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} does not fit the model of its config.json: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {mismatched[:5]}")
    if dtype is None:
        # Tensors come back in the dtype they were saved in (a model cast with .to() after it was built).
        for key, tensor in tensors.items():
            if key in weights and tensor.dtype != weights[key].dtype:
                tensor.data = tensor.data.to(weights[key].dtype)
    model.load_state_dict(weights, strict=False)
    return model


def load_pretrained(path, *, dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained`, or a transformers / mamba_ssm Mamba checkpoint.

    The format is read from config.json: ``"format": "ssmlab"``, a transformers
    ``model_type`` of ``"mamba"`` or ``"mamba2"``, or a mamba_ssm config (``d_model``,
    ``n_layer``). ``dtype`` rebuilds the model in that dtype (the saved tensors are cast
    into it); by default each tensor keeps the dtype it was saved in. ``device``: where the
    model goes (default CPU). The model is in eval mode; ``model.config`` holds its
    ``create_model`` options and ``model.task_info`` the task and tokeniser it was saved with.
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a directory written by save_pretrained, or a "
                              f"transformers or mamba_ssm checkpoint")
    with open(config_file) as f:
        config = json.load(f)
    if config.get("format") == FORMAT:
        model = _load_ssmlab(path, config, dtype=dtype)
        info = {k: config[k] for k in ("task", "tokenizer") if k in config}
    elif is_reference_config(config):
        model = load_reference(path, config, dtype=dtype)
        info = {k: v for k, v in (config.get("ssmlab") or {}).items() if k in ("task", "tokenizer")}
    else:
        raise CheckpointError(f"{path}: config.json is neither a transformers Mamba/Mamba2 config (model_type "
                              f"{config.get('model_type')!r}) nor a mamba_ssm config (d_model, n_layer) nor ssmlab's "
                              f"format (\"format\": \"ssmlab\")")
    model.task_info = _decode(info)
    if device is not None:
        model.to(device)
    return model.eval()
