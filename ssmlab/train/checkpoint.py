"""Training checkpoints: everything needed to resume a run exactly, loaded as weights only.

A checkpoint holds the model, the optimiser, the learning-rate schedule, every
random number generator the run draws from (the batch sampler's, torch's,
Python's, NumPy's, CUDA's), the step, the curves so far, the early-stopping
record and the training time so far, plus a fingerprint of the model (its class
and every parameter's name and shape) and of everything that changes the run's
result (see ``ssmlab.train.trainer``).

Safety: the file holds tensors and plain Python values only (random states as
tensors, lists and ints) and is read with ``torch.load(weights_only=True)``, so
a planted or tampered file cannot run code; it is refused with a
:class:`CheckpointError`. Integrity: the file records the SHA-256 of its
contents (every tensor's dtype, shape and bytes, and every other value), checked
on load, so a corrupted file is an error rather than a run that resumes from
damaged weights and finishes with wrong metrics.

It is written to a temporary file and moved into place (``os.replace``), so a
process killed at any moment leaves either the previous checkpoint or the new
one, never half of one. Started again with the same checkpoint directory, a run
continues from the last checkpoint and ends with the same numbers as if it had
never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import sys
import tempfile
from pathlib import Path

import torch

from ssmlab.interop.checkpoints import CheckpointError

FILE = "checkpoint.pt"
LOCK = "checkpoint.lock"
FORMAT = "ssmlab-checkpoint/2"


def model_fingerprint(model: torch.nn.Module) -> dict:
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    return {"class": type(model).__name__,
            "mixer": getattr(getattr(model, "backbone", None), "mixer_name", None),
            "shapes": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
            "n_tensors": len(shapes)}


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> dict:
    """The ssmlab version and a SHA-256 over the package's Python sources.

    The source hash changes with any edit, committed or not, and needs no git checkout."""
    import ssmlab

    root = Path(ssmlab.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return {"ssmlab": ssmlab.__version__, "source_sha256": digest.hexdigest()[:16]}


def _rng_states(generator: torch.Generator) -> dict:
    version, internal, gauss = random.getstate()
    states = {"batches": generator.get_state(), "torch": torch.get_rng_state(),
              "python": [version, list(internal), gauss]}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # numpy is a dependency, but the checkpoint need not fail without it
        pass
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict, generator: torch.Generator) -> None:
    generator.set_state(states["batches"])
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        import numpy as np

        s = states["numpy"]
        np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _hash(obj, digest) -> None:
    """Feed ``obj`` (nested dicts, lists, tuples, tensors, plain scalars) into ``digest`` canonically."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{list(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            digest.update(f"K{type(key).__name__}:{key!r}".encode())
            _hash(obj[key], digest)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _hash(item, digest)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        digest.update(f"S{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"checkpoints hold tensors and plain values only, not {type(obj).__name__}")


def content_sha256(content: dict) -> str:
    digest = hashlib.sha256()
    _hash(content, digest)
    return digest.hexdigest()


def save(directory, *, model, optimizer, scheduler, generator, step: int, curves: list, extra: dict,
         run_fingerprint: dict) -> Path:
    """Write the checkpoint of ``step`` (the number of optimiser steps done) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_states(generator),
        "curves": [list(c) for c in curves],
        "extra": extra,
        "model_fingerprint": model_fingerprint(model),
        "run_fingerprint": run_fingerprint,
    }
    payload = {"format": FORMAT, "sha256": content_sha256(content), "content": content}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=FILE + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, directory / FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / FILE


def remove(directory) -> None:
    """Delete the checkpoint in ``directory`` and any temporary file a killed write left behind."""
    directory = Path(directory)
    (directory / FILE).unlink(missing_ok=True)
    for tmp in directory.glob(FILE + ".*.tmp"):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(directory):
    """Hold ``directory`` for one training process: a second one that tries while it is held (the
    same run started twice at once) gets a :class:`CheckpointError` instead of resuming from, and
    overwriting, the first one's checkpoints. An advisory ``flock`` on ``LOCK``, released by the
    operating system when the process dies, and removed when it is done; a no-op where ``fcntl``
    is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CheckpointError(f"{directory} is in use by another training process ({holder}); wait for it to "
                                  f"finish or use another checkpoint directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            # Unlinked before it is released: a process that starts later locks a new file, never this one.
            (directory / LOCK).unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _read(path: Path) -> dict:
    """The verified contents of the checkpoint file ``path``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        imported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if imported:
            raise CheckpointError(f"{path} is not a weights-only ssmlab checkpoint and was not loaded (it would "
                                  f"import {imported.group(1)}); delete it or use another checkpoint "
                                  f"directory") from None
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        first = reason.group(1).strip() if reason else (text.strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable ssmlab checkpoint ({type(exc).__name__}: {first}); "
                              f"delete it or use another checkpoint directory") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("content"), dict):
        raise CheckpointError(f"{path} is not an ssmlab training checkpoint of format {FORMAT} (an older ssmlab's, "
                              f"or another file); delete it or use another checkpoint directory")
    try:
        actual = content_sha256(payload["content"])
    except TypeError as exc:
        raise CheckpointError(f"{path} is not an ssmlab training checkpoint ({exc})") from None
    if actual != payload.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: the SHA-256 of its contents does not match the one written "
                              f"with it; delete it to train the run again from the start")
    return payload["content"]


def load(directory, *, model, optimizer, scheduler, generator, run_fingerprint: dict,
         discard_mismatch: bool = False) -> dict | None:
    """Restore the latest checkpoint in ``directory`` into the given objects; None if there is none.

    Returns ``{"step", "curves", "extra"}``. A file that is not a weights-only ssmlab checkpoint,
    or whose checksum fails, is a :class:`CheckpointError`. So is a checkpoint of another model
    or of a run with any other setting (the error names what differs), unless ``discard_mismatch``
    (for directories that the sweep manages, e.g. after a code change): then it is deleted, a
    one-line note is printed, and None is returned so the run starts afresh.
    """
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    content = _read(path)
    mine, theirs = model_fingerprint(model), content["model_fingerprint"]
    problem = None
    if mine != theirs:
        problem = (f"{path} was written by another model ({theirs['class']} of {theirs['mixer']!r}, "
                   f"{theirs['n_tensors']} tensors, shapes {theirs['shapes']}) than this one ({mine['class']} of "
                   f"{mine['mixer']!r}, {mine['n_tensors']} tensors, shapes {mine['shapes']})")
    else:
        here, there = _flatten(run_fingerprint), _flatten(content["run_fingerprint"])
        changed = sorted(k for k in set(here) | set(there) if _plain(here.get(k)) != _plain(there.get(k)))
        if changed:
            problem = (f"{path} was written by a run with other settings ({', '.join(changed)} differ: "
                       + ", ".join(f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in changed) + ")")
    if problem is not None:
        if discard_mismatch:
            print(f"{problem}; starting the run afresh", file=sys.stderr, flush=True)
            remove(directory)
            return None
        raise CheckpointError(f"{problem}; use another checkpoint directory, or delete it to start afresh")
    model.load_state_dict(content["model"])
    optimizer.load_state_dict(content["optimizer"])
    scheduler.load_state_dict(content["scheduler"])
    _set_rng_states(content["rng"], generator)
    return {"step": content["step"], "curves": content["curves"], "extra": content["extra"]}


def _plain(value):
    """Tuples and lists compare equal (a checkpoint round trip keeps tuples, JSON makes lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
