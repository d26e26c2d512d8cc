"""The trainer: one loop for every (model, task) pair.

AdamW with per-parameter groups, a warmup + cosine (or constant) schedule,
gradient clipping, gradient accumulation, bfloat16 autocast, evaluation on a
validation split with early stopping, checkpoints that resume a run exactly,
distributed data parallel under ``torchrun``, and a progress bar with loss,
throughput and ETA.

Parameter groups come from the model alone: a parameter with an ``_optim`` dict
(set by a mixer with :func:`ssmlab.mixers.set_optim`, e.g. no weight decay and a
lower learning rate for S4's A and dt) gets those settings; other matrices get
``weight_decay``; vectors (biases, norm weights) get none. The trainer has no
per-model special cases: the loss and metrics are the model head's own (``count``, ``loss``,
``metrics`` and ``takes_lengths``, see :mod:`ssmlab.models.heads`); a model that has none gets
those of the registered head its task names.

A run that diverges (a non-finite training loss or gradient norm, parameters
that became non-finite and broke a kernel, non-finite evaluation metrics) stops
with :class:`TrainingDiverged`, whose message is one line saying where and what.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ssmlab import registry
from ssmlab.tasks.base import Split, Task
from ssmlab.train import checkpoint, distributed

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")


class TrainingDiverged(FloatingPointError):
    """Training or evaluation produced a non-finite value; the message says where and what, in one line."""


@dataclass
class TrainConfig:
    """Trainer settings with their defaults."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "cosine"  # "cosine": linear warmup then cosine decay to min_lr_ratio; "constant": warmup only
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # maximum gradient norm; None: no clipping
    grad_accum_steps: int = 1  # micro-batches per optimiser step (batch_size must divide evenly)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; SSM parameters stay float32)
    eval_every: int = 0  # evaluate on the validation split (else the test split) every N steps; 0: only at the end
    eval_batch_size: int = 128
    early_stopping_patience: int = 0  # stop after N evaluations without improvement; 0: never
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    checkpoint_dir: str | None = None  # resume from / write checkpoints here
    checkpoint_every: int = 0  # also every N steps (always at the end when checkpoint_dir is set)
    keep_checkpoint: bool = False  # keep the checkpoint of a finished run (deleted by default)

    def __post_init__(self):
        def fail(name, valid):
            raise ValueError(f"TrainConfig.{name} must be {valid}, got {getattr(self, name)!r}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("steps", "batch_size", "eval_batch_size", "log_every", "grad_accum_steps"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("eval_every", "early_stopping_patience", "checkpoint_every", "warmup_steps"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if not is_int(self.seed):
            fail("seed", "an integer")
        if not is_number(self.lr) or self.lr <= 0:
            fail("lr", "a finite number > 0")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a finite number >= 0")
        if not is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            fail("min_lr_ratio", "a number in [0, 1]")
        if self.grad_clip is not None and (not is_number(self.grad_clip) or self.grad_clip <= 0):
            fail("grad_clip", "a finite number > 0, or None for no clipping")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(is_number(b) and 0 <= b < 1 for b in self.betas)):
            fail("betas", "two numbers in [0, 1)")
        self.betas = tuple(self.betas)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.device, str):
            fail("device", "a device name such as 'cpu' or 'cuda'")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be divisible by "
                             f"grad_accum_steps={self.grad_accum_steps}")
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError("TrainConfig.early_stopping_patience needs eval_every > 0")


@dataclass
class TrainResult:
    metrics: dict[str, float]
    curves: list[tuple[int, str, str, float]] = field(default_factory=list)
    n_params: int = 0
    wall_time_s: float = 0.0
    peak_memory_mb: float | None = None


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one group per distinct (lr, weight_decay) pair."""
    groups: dict[tuple, list] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        hints = getattr(param, "_optim", {})
        lr = hints.get("lr", config.lr)
        wd = hints.get("weight_decay", config.weight_decay if param.dim() >= 2 else 0.0)
        groups.setdefault((lr, wd), []).append(param)
    # Shared (tied) parameters appear once: model.parameters() already deduplicates.
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas)


def warmup_cosine(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio`` (or constant)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _autocast(config: TrainConfig, device: str):
    if config.precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def objective(model: nn.Module, task: Task):
    """What the trainer asks for the loss and metrics: the model head itself (``count``, ``loss``,
    ``metrics``, ``takes_lengths``; see :mod:`ssmlab.models.heads`), or, for a model that has none,
    the registered head of the task (``task.head``)."""
    if all(hasattr(model, name) for name in ("count", "loss", "metrics", "takes_lengths")):
        return model
    return registry.get("model", task.head).obj


def _forward(model: nn.Module, split: Split, idx: torch.Tensor, takes_lengths: bool, device: str):
    """Outputs and targets of examples ``idx``; lengths go to the heads that take them."""
    x = split.inputs[idx].to(device)
    y = split.targets[idx].to(device)
    if split.lengths is not None and takes_lengths:
        return model(x, lengths=split.lengths[idx].to(device)), y
    return model(x), y


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, head, batch_size: int, device: str, *,
             metric: str | None = None, precision: str = "fp32") -> dict[str, float]:
    """Loss and the head's metrics over a split (``bits_per_byte`` too when the task's metric is it).
    ``head``: what :func:`objective` gives (the model itself, for ssmlab's heads)."""
    was_training = model.training
    model.eval()
    total_loss, sums, count = 0.0, {}, 0
    config = TrainConfig(precision=precision)
    for i in range(0, len(split), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(split)))
        with _autocast(config, device):
            out, y = _forward(model, split, idx, head.takes_lengths, device)
        n = head.count(y)
        total_loss += head.loss(out, y).item() * n
        count += n
        for k, v in head.metrics(out, y).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    results = {"loss": total_loss / max(count, 1)}
    results.update({k: v / max(count, 1) for k, v in sums.items()})
    if metric == "bits_per_byte":
        results["bits_per_byte"] = results["loss"] / math.log(2)
    return results


def _improved(value: float, best: float | None, lower_is_better: bool) -> bool:
    if best is None:
        return True
    return value < best if lower_is_better else value > best


# TrainConfig fields that do not change a run's result: display, and where and how often checkpoints go.
NOT_IN_FINGERPRINT = ("progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoint")


def _backends() -> dict:
    """The op backends chosen by environment variables (``SSMLAB_BACKEND``, ``SSMLAB_<OP>_BACKEND``)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("SSMLAB_") and k.endswith("BACKEND")}


def _run_fingerprint(task: Task, config: TrainConfig, identity: dict | None = None) -> dict:
    """Everything a resumed run must share with the checkpoint it resumes: the task and all its
    options, every TrainConfig field but display and checkpoint placement, the ssmlab code (version
    and a hash of its sources), the torch version, the op backends chosen by environment variables,
    and the caller's ``identity`` of the run (the sweep gives the store's id and the run's full
    configuration, model options included). As plain JSON values."""
    from ssmlab.train.checkpoint import code_fingerprint

    train_settings = {k: v for k, v in asdict(config).items() if k not in NOT_IN_FINGERPRINT}
    fingerprint = {"task": task.registry_name, "task_options": task.options(), "train": train_settings,
                   "code": code_fingerprint(), "torch": torch.__version__, "backends": _backends(),
                   "identity": identity or {}}
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=repr))


class _PeakMemory:
    """The peak memory of one run, started when constructed.

    CUDA: the peak of memory allocated by tensors on the device (``torch.cuda.max_memory_allocated``
    after a reset). CPU on Linux: the peak resident set size of the process during the run (the
    kernel's ``VmHWM``, reset at the start by writing 5 to ``/proc/self/clear_refs``), which counts
    the interpreter, libraries and data sets of the process as well as the run's own tensors, but
    not the peaks of earlier runs in the same process. Elsewhere, or where that reset is not
    allowed, the process's high-water mark since it started (``ru_maxrss``).
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.per_run = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.per_run = True
        except OSError:
            pass

    def megabytes(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        if self.per_run:
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) / 1024
            except OSError:
                pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _check_finite(results: dict, where: str) -> None:
    bad = {k: v for k, v in results.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"{where}: " + ", ".join(f"{k} is {v}" for k, v in sorted(bad.items()))
                               + " (a run with non-finite metrics is not recorded as finished)")


def _nonfinite_parameters(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def train(model: nn.Module, task: Task, config: TrainConfig, *, description: str = "",
          identity: dict | None = None, discard_mismatched_checkpoint: bool = False) -> TrainResult:
    """Train ``model`` on ``task`` and evaluate on its test split; returns metrics and curves.

    The final model is also evaluated on the validation split when the task has one
    (``val_<name>`` metrics), so that a learning-rate sweep can choose on it.

    With ``config.checkpoint_dir`` holding a checkpoint of this run, training resumes from it; a
    checkpoint of another model or with any other setting that changes the result (see
    :func:`_run_fingerprint`; ``identity`` is the caller's JSON-able description of the run, e.g.
    the store and the run's configuration) is a :class:`~ssmlab.train.checkpoint.CheckpointError`,
    or with ``discard_mismatched_checkpoint`` deleted so the run starts afresh. The checkpoint of
    a finished run is deleted unless ``config.keep_checkpoint``. Non-finite losses, gradient
    norms or metrics raise :class:`TrainingDiverged`.

    ``wall_time_s`` is the training time (the loop, not the final evaluation), summed over the
    segments of a resumed run; ``peak_memory_mb`` is described in :class:`_PeakMemory`.

    While it trains, the run holds its checkpoint directory (:func:`~ssmlab.train.checkpoint.exclusive`):
    the same run started twice at once fails in the second process instead of sharing checkpoints.

    Under ``torchrun`` with several processes, this is distributed data parallel training;
    every rank returns, rank 0 with the evaluated metrics.
    """
    ctx = distributed.setup(config.device)
    held = bool(config.checkpoint_dir) and ctx.is_main
    with checkpoint.exclusive(config.checkpoint_dir) if held else nullcontext():
        return _train(model, task, config, ctx, label=description or "train", identity=identity,
                      discard_mismatched_checkpoint=discard_mismatched_checkpoint)


def _train(model: nn.Module, task: Task, config: TrainConfig, ctx: distributed.Context, *, label: str,
           identity: dict | None, discard_mismatched_checkpoint: bool) -> TrainResult:
    device = ctx.device
    memory = _PeakMemory(device)
    model.to(device).train()
    head = objective(model, task)
    metric = getattr(task, "metric", "accuracy")
    train_split, test_split = task.split("train"), task.split("test")
    try:
        val_split = task.split("val")
    except ValueError:
        val_split = None
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, config))
    generator = torch.Generator().manual_seed(config.seed)
    curves: list[tuple[int, str, str, float]] = []
    start_step, best, bad_evals, stopped_at, elapsed_before = 0, None, 0, None, 0.0
    fingerprint = _run_fingerprint(task, config, identity)
    if config.checkpoint_dir:
        resumed = checkpoint.load(config.checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                  generator=generator, run_fingerprint=fingerprint,
                                  discard_mismatch=discard_mismatched_checkpoint)
        if resumed is not None:
            start_step, curves = resumed["step"], [tuple(c) for c in resumed["curves"]]
            best, bad_evals = resumed["extra"].get("best"), resumed["extra"].get("bad_evals", 0)
            elapsed_before = float(resumed["extra"].get("elapsed_s", 0.0))
    net = distributed.wrap(model, ctx)
    start = time.perf_counter()

    def save(step):
        if config.checkpoint_dir and ctx.is_main:
            checkpoint.save(config.checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                            generator=generator, step=step, curves=curves,
                            extra={"best": best, "bad_evals": bad_evals,
                                   "elapsed_s": elapsed_before + time.perf_counter() - start},
                            run_fingerprint=fingerprint)

    last_loss = None  # (step, loss) of the last optimiser step

    @contextmanager
    def watch(step: int):
        """A kernel error after the parameters became non-finite is divergence, and is said as such."""
        try:
            yield
        except Exception as exc:
            bad = _nonfinite_parameters(model)
            if not bad:
                raise
            after = f"after step {last_loss[0]} (loss {last_loss[1]:.4g})" if last_loss else "before training"
            raise TrainingDiverged(f"{label}: {len(bad)} parameter tensors (first {bad[0]}) became non-finite "
                                   f"{after}; step {step} then failed with {type(exc).__name__}") from exc

    # Positions per example: every token, or every feature vector of real-valued inputs.
    example = train_split.inputs[0]
    positions = example.numel() if not example.is_floating_point() else max(1, example.numel() // example.shape[-1])
    tokens_per_step = config.batch_size * positions
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
    bar = tqdm(range(start_step, config.steps), desc=label, initial=start_step,
               total=config.steps, disable=None if (config.progress and ctx.is_main) else True, leave=False,
               file=sys.stderr, dynamic_ncols=True, unit="step")
    micro = config.batch_size // config.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    for step in bar:
        idx = torch.randint(0, len(train_split), (config.batch_size,), generator=generator)
        chunks = distributed.shard(idx, ctx).split(micro // ctx.world_size if ctx.enabled else micro)
        total = sum(head.count(train_split.targets[c]) for c in chunks)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for i, chunk in enumerate(chunks):
            # Only the last micro-batch synchronises gradients across ranks.
            sync = net.no_sync() if ctx.enabled and i < len(chunks) - 1 else nullcontext()
            with sync:
                with watch(step):
                    with _autocast(config, device):
                        out, y = _forward(net, train_split, chunk, head.takes_lengths, device)
                    loss = head.loss(out, y)
                weighted = loss * (head.count(y) / max(total, 1))
                if not torch.isfinite(loss):
                    before = f"; the loss was {last_loss[1]:.4g} at step {last_loss[0]}" if last_loss else ""
                    raise TrainingDiverged(f"{label}: training loss became {loss.item()} at step {step} "
                                           f"(lr {config.lr * warmup_cosine(step, config):.3g}){before}")
                with watch(step):
                    weighted.backward()
                step_loss += weighted.item()
        if config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if not torch.isfinite(norm):
            raise TrainingDiverged(f"{label}: the gradient norm became {float(norm)} at step {step} "
                                   f"(loss {step_loss:.4g}, lr {config.lr * warmup_cosine(step, config):.3g})")
        optimizer.step()
        scheduler.step()
        last_loss = (step, step_loss)
        done = step + 1
        if step % config.log_every == 0 or done == config.steps:
            step_loss = distributed.mean(step_loss, ctx)  # each rank saw its own shard
            curves.append((step, "train", "loss", step_loss))
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_step * (done - start_step) / elapsed:,.0f}")
        stop = False
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            if ctx.is_main:
                split_name, split = ("val", val_split) if val_split is not None else ("test", test_split)
                with watch(done):
                    results = evaluate(model, split, head, config.eval_batch_size, device, metric=metric,
                                       precision=config.precision)
                _check_finite(results, f"{label}: evaluation on the {split_name} split at step {done}")
                for name, value in results.items():
                    curves.append((done, split_name, name, value))
                watched = results.get(metric, results["loss"])
                watched_name = metric if metric in results else "loss"
                # The task's metric in its declared direction; the loss, when the metric is missing, is lower-better.
                lower = getattr(task, "lower_is_better", False) if watched_name == metric else True
                if _improved(watched, best, lower):
                    best, bad_evals = watched, 0
                else:
                    bad_evals += 1
                stop = bool(config.early_stopping_patience) and bad_evals >= config.early_stopping_patience
            stop = distributed.broadcast_flag(stop, ctx)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            save(done)
        if stop:
            stopped_at = done
            break
    bar.close()
    final_step = stopped_at or config.steps
    save(final_step)
    wall = elapsed_before + time.perf_counter() - start
    metrics: dict[str, float] = {}
    if ctx.is_main:
        with watch(final_step):
            final = evaluate(model, test_split, head, config.eval_batch_size, device, metric=metric,
                             precision=config.precision)
        for name, value in final.items():
            curves.append((final_step, "test", name, value))
        metrics = {f"test_{k}": v for k, v in final.items()}
        if val_split is not None:
            # The validation metrics of the final model: what a learning-rate sweep chooses by, never test.
            with watch(final_step):
                validation = evaluate(model, val_split, head, config.eval_batch_size, device, metric=metric,
                                      precision=config.precision)
            for name, value in validation.items():
                curves.append((final_step, "val", name, value))
            metrics.update({f"val_{k}": v for k, v in validation.items()})
        train_losses = [c[3] for c in curves if c[1] == "train" and c[2] == "loss"]
        metrics["train_loss"] = train_losses[-1] if train_losses else float("nan")
        if stopped_at is not None:
            metrics["stopped_at_step"] = float(stopped_at)
        _check_finite(metrics, f"{label}: final evaluation after {final_step} steps")
    distributed.barrier(ctx)
    if config.checkpoint_dir and ctx.is_main and not config.keep_checkpoint:
        checkpoint.remove(config.checkpoint_dir)
    return TrainResult(metrics=metrics, curves=curves, n_params=sum(p.numel() for p in model.parameters()),
                       wall_time_s=wall, peak_memory_mb=memory.megabytes())
