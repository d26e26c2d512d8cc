"""Distributed data-parallel training through PyTorch's own engine.

Launched by ``torchrun --nproc_per_node N ...`` (which sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``), the trainer joins the process group (gloo
on a CPU, NCCL on GPUs), wraps the model in ``DistributedDataParallel``, and
each rank takes its own shard of every global batch, so the global batch size
is the configured one. Only rank 0 evaluates, writes checkpoints and results,
and shows progress. Without those variables everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def setup(device: str) -> Context:
    """Join the process group when launched by torchrun; the device of this rank."""
    if not launched():
        return Context(device=device)
    world, global_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Context(global_rank, world, local, device)


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(indices: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's part of a global batch of example indices (contiguous, equal parts)."""
    if not ctx.enabled:
        return indices
    if len(indices) % ctx.world_size:
        raise ValueError(f"the batch size {len(indices)} must be divisible by the number of processes "
                         f"{ctx.world_size}")
    part = len(indices) // ctx.world_size
    return indices[ctx.rank * part:(ctx.rank + 1) * part]


def broadcast_flag(flag: bool, ctx: Context) -> bool:
    """Rank 0's decision (e.g. to stop early), on every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device if ctx.device.startswith("cuda") else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean(value: float, ctx: Context) -> float:
    """The mean of ``value`` over the ranks (every rank must call it at the same point)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()
