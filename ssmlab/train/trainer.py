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
per-model special cases: the loss and metrics of each model head come from
:func:`ssmlab.models.heads.head_loss`.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ssmlab.models.heads import head_loss
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task
from ssmlab.train import checkpoint, distributed

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")


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
    grad_clip: float = 1.0
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

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "log_every", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "early_stopping_patience", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
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


def _forward(model: nn.Module, split: Split, idx: torch.Tensor, head: str, device: str):
    """Outputs and targets of examples ``idx``; lengths go to the heads that take them."""
    x = split.inputs[idx].to(device)
    y = split.targets[idx].to(device)
    if split.lengths is not None and head != "lm":
        return model(x, lengths=split.lengths[idx].to(device)), y
    return model(x), y


def _count(head: str, targets: torch.Tensor) -> int:
    """The number of targets ``head_loss`` averages over."""
    if head == "lm":
        return int((targets != IGNORE_INDEX).sum())
    return targets.numel() if head == "forecast" else targets.shape[0]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, head: str, batch_size: int, device: str, *,
             metric: str | None = None, precision: str = "fp32") -> dict[str, float]:
    """Loss and the head's metrics over a split (``bits_per_byte`` too when the task's metric is it)."""
    was_training = model.training
    model.eval()
    total_loss, sums, count = 0.0, {}, 0
    config = TrainConfig(precision=precision)
    for i in range(0, len(split), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(split)))
        with _autocast(config, device):
            out, y = _forward(model, split, idx, head, device)
        loss, batch_sums, n = head_loss(head, out, y)
        n = int(n)
        total_loss += loss.item() * n
        count += n
        for k, v in batch_sums.items():
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


def _run_fingerprint(task: Task, config: TrainConfig) -> dict:
    """The settings a resumed run must share with the checkpoint it resumes."""
    keep = ("steps", "batch_size", "lr", "weight_decay", "schedule", "warmup_steps", "min_lr_ratio",
            "grad_accum_steps", "precision", "seed")
    return {"task": task.registry_name, **{k: getattr(config, k) for k in keep}}


def train(model: nn.Module, task: Task, config: TrainConfig, *, description: str = "") -> TrainResult:
    """Train ``model`` on ``task`` and evaluate on its test split; returns metrics and curves.

    The final model is also evaluated on the validation split when the task has one
    (``val_<name>`` metrics), so that a learning-rate sweep can choose on it.

    With ``config.checkpoint_dir`` holding a checkpoint of this run, training resumes from it.
    Under ``torchrun`` with several processes, this is distributed data parallel training;
    every rank returns, rank 0 with the evaluated metrics.
    """
    ctx = distributed.setup(config.device)
    device = ctx.device
    model.to(device).train()
    head = task.head
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
    start_step, best, bad_evals, stopped_at = 0, None, 0, None
    fingerprint = _run_fingerprint(task, config)
    if config.checkpoint_dir:
        resumed = checkpoint.load(config.checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                  generator=generator, run_fingerprint=fingerprint)
        if resumed is not None:
            start_step, curves = resumed["step"], [tuple(c) for c in resumed["curves"]]
            best, bad_evals = resumed["extra"].get("best"), resumed["extra"].get("bad_evals", 0)
    net = distributed.wrap(model, ctx)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def save(step):
        if config.checkpoint_dir and ctx.is_main:
            checkpoint.save(config.checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                            generator=generator, step=step, curves=curves,
                            extra={"best": best, "bad_evals": bad_evals}, run_fingerprint=fingerprint)

    start = time.perf_counter()
    # Positions per example: every token, or every feature vector of real-valued inputs.
    example = train_split.inputs[0]
    positions = example.numel() if not example.is_floating_point() else max(1, example.numel() // example.shape[-1])
    tokens_per_step = config.batch_size * positions
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
    bar = tqdm(range(start_step, config.steps), desc=description or "train", initial=start_step,
               total=config.steps, disable=None if (config.progress and ctx.is_main) else True, leave=False,
               file=sys.stderr, dynamic_ncols=True, unit="step")
    micro = config.batch_size // config.grad_accum_steps
    for step in bar:
        idx = torch.randint(0, len(train_split), (config.batch_size,), generator=generator)
        chunks = distributed.shard(idx, ctx).split(micro // ctx.world_size if ctx.enabled else micro)
        total = sum(_count(head, train_split.targets[c]) for c in chunks)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for i, chunk in enumerate(chunks):
            # Only the last micro-batch synchronises gradients across ranks.
            sync = net.no_sync() if ctx.enabled and i < len(chunks) - 1 else nullcontext()
            with sync:
                with _autocast(config, device):
                    out, y = _forward(net, train_split, chunk, head, device)
                loss, _, n = head_loss(head, out, y)
                weighted = loss * (int(n) / max(total, 1))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{description or 'train'}: loss became {loss.item()} at step {step}")
                weighted.backward()
                step_loss += weighted.item()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if step % config.log_every == 0 or done == config.steps:
            step_loss = distributed.mean(step_loss, ctx)  # each rank saw its own shard
            curves.append((step, "train", "loss", step_loss))
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_step * (done - start_step) / elapsed:,.0f}")
        stop = False
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            if ctx.is_main:
                split_name, split = ("val", val_split) if val_split is not None else ("test", test_split)
                results = evaluate(model, split, head, config.eval_batch_size, device, metric=metric,
                                   precision=config.precision)
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
    wall = time.perf_counter() - start
    metrics: dict[str, float] = {}
    if ctx.is_main:
        final = evaluate(model, test_split, head, config.eval_batch_size, device, metric=metric,
                         precision=config.precision)
        for name, value in final.items():
            curves.append((final_step, "test", name, value))
        metrics = {f"test_{k}": v for k, v in final.items()}
        if val_split is not None:
            # The validation metrics of the final model: what a learning-rate sweep chooses by, never test.
            validation = evaluate(model, val_split, head, config.eval_batch_size, device, metric=metric,
                                  precision=config.precision)
            for name, value in validation.items():
                curves.append((final_step, "val", name, value))
            metrics.update({f"val_{k}": v for k, v in validation.items()})
        train_losses = [c[3] for c in curves if c[1] == "train" and c[2] == "loss"]
        metrics["train_loss"] = train_losses[-1] if train_losses else float("nan")
        if stopped_at is not None:
            metrics["stopped_at_step"] = float(stopped_at)
    distributed.barrier(ctx)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        # Process-wide high-water mark of resident memory (Linux reports KiB).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return TrainResult(metrics=metrics, curves=curves, n_params=sum(p.numel() for p in model.parameters()),
                       wall_time_s=wall, peak_memory_mb=peak)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
