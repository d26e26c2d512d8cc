"""Training checkpoints: everything needed to resume a run exactly.

A checkpoint holds the model, the optimiser, the learning-rate schedule, every
random number generator the run draws from (the batch sampler's, torch's,
Python's, NumPy's, CUDA's), the step, the curves so far and the early-stopping
record, plus a fingerprint of the model (its class and every parameter's name
and shape) and of the settings that change the run. It is written to a
temporary file and moved into place (``os.replace``), so a process killed at
any moment leaves either the previous checkpoint or the new one, never half of
one. Started again with the same checkpoint directory, a run continues from
the last checkpoint and ends with the same numbers as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import torch

FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that does not belong to this model or run."""


def model_fingerprint(model: torch.nn.Module) -> dict:
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    return {"class": type(model).__name__,
            "mixer": getattr(getattr(model, "backbone", None), "mixer_name", None),
            "shapes": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
            "n_tensors": len(shapes)}


def _rng_states(generator: torch.Generator) -> dict:
    states = {"batches": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:  # numpy is a dependency, but the checkpoint need not fail without it
        pass
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict, generator: torch.Generator) -> None:
    generator.set_state(states["batches"])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(directory, *, model, optimizer, scheduler, generator, step: int, curves: list, extra: dict,
         run_fingerprint: dict) -> Path:
    """Write the checkpoint of ``step`` (the number of optimiser steps done) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_states(generator),
        "curves": curves,
        "extra": extra,
        "model_fingerprint": model_fingerprint(model),
        "run_fingerprint": run_fingerprint,
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=FILE + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, directory / FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / FILE


def load(directory, *, model, optimizer, scheduler, generator, run_fingerprint: dict) -> dict | None:
    """Restore the latest checkpoint in ``directory`` into the given objects; None if there is none.

    Returns ``{"step", "curves", "extra"}``. A checkpoint of another model or another
    run configuration is a :class:`CheckpointError` that names both.
    """
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable ssmlab checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "model_fingerprint" not in payload:
        raise CheckpointError(f"{path} is not an ssmlab training checkpoint")
    mine, theirs = model_fingerprint(model), payload["model_fingerprint"]
    if mine != theirs:
        raise CheckpointError(f"{path} was written by another model ({theirs['class']} of "
                              f"{theirs['mixer']!r}, {theirs['n_tensors']} tensors, shapes {theirs['shapes']}) than "
                              f"this one ({mine['class']} of {mine['mixer']!r}, {mine['n_tensors']} tensors, "
                              f"shapes {mine['shapes']}); use another checkpoint directory")
    if payload["run_fingerprint"] != run_fingerprint:
        changed = sorted(k for k in set(run_fingerprint) | set(payload["run_fingerprint"])
                         if run_fingerprint.get(k) != payload["run_fingerprint"].get(k))
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(changed)} differ: "
                              + ", ".join(f"{k} {payload['run_fingerprint'].get(k)!r} there, {run_fingerprint.get(k)!r} "
                                          f"here" for k in changed) + "); use another checkpoint directory")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_states(payload["rng"], generator)
    return {"step": payload["step"], "curves": payload["curves"], "extra": payload["extra"]}
