"""The trainer: AdamW with per-parameter groups, warmup + cosine schedule, gradient
clipping, evaluation on a held-out split and a progress bar.

Parameter groups come from the model alone: a parameter with an ``_optim`` dict
(set by a mixer with :func:`ssmlab.mixers.set_optim`, e.g. no weight decay and a
lower learning rate for S4's A and dt) gets those settings; other matrices get
``weight_decay``; vectors (biases, norm weights) get none. The trainer has no
per-model special cases.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssmlab.tasks.base import IGNORE_INDEX, Split, Task


@dataclass
class TrainConfig:
    """Trainer settings with their defaults."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 0
    eval_batch_size: int = 128
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")


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
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _loss_and_correct(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, head: str):
    logits = model(inputs)
    if head == "lm":
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        mask = targets != IGNORE_INDEX
        correct = ((logits.argmax(-1) == targets) & mask).sum()
        return loss, correct, mask.sum()
    loss = F.cross_entropy(logits.float(), targets)
    return loss, (logits.argmax(-1) == targets).sum(), torch.tensor(targets.numel())


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, head: str, batch_size: int, device: str) -> dict[str, float]:
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for i in range(0, len(split), batch_size):
        x = split.inputs[i:i + batch_size].to(device)
        y = split.targets[i:i + batch_size].to(device)
        loss, c, n = _loss_and_correct(model, x, y, head)
        total_loss += loss.item() * int(n)
        correct, count = correct + int(c), count + int(n)
    model.train()
    return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}


def train(model: nn.Module, task: Task, config: TrainConfig, *, description: str = "") -> TrainResult:
    """Train ``model`` on ``task`` and evaluate on its test split; returns metrics and curves."""
    device = config.device
    model.to(device).train()
    train_split, test_split = task.split("train"), task.split("test")
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, config))
    generator = torch.Generator().manual_seed(config.seed)
    curves: list[tuple[int, str, str, float]] = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
    bar = tqdm(range(config.steps), desc=description or "train", disable=None if config.progress else True,
               leave=False, file=sys.stderr, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, len(train_split), (config.batch_size,), generator=generator)
        x, y = train_split.inputs[idx].to(device), train_split.targets[idx].to(device)
        loss, _, _ = _loss_and_correct(model, x, y, task.head)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{description or 'train'}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            curves.append((step, "train", "loss", loss.item()))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            for name, value in evaluate(model, test_split, task.head, config.eval_batch_size, device).items():
                curves.append((step + 1, "test", name, value))
    bar.close()
    final = evaluate(model, test_split, task.head, config.eval_batch_size, device)
    wall = time.perf_counter() - start
    for name, value in final.items():
        curves.append((config.steps, "test", name, value))
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        # Process-wide high-water mark of resident memory (Linux reports KiB).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = {f"test_{k}": v for k, v in final.items()}
    metrics["train_loss"] = curves[-len(final) - 1][3]
    return TrainResult(metrics=metrics, curves=curves, n_params=sum(p.numel() for p in model.parameters()),
                       wall_time_s=wall, peak_memory_mb=peak)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
