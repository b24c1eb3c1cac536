"""Where a training stage runs: device, threads, mixed precision and torchrun/DDP.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a stage joins the process
group (gloo on CPU, nccl on CUDA); every rank trains on its shard of each epoch
(DistributedSampler) and only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from msn_cli.runtime import autocast, resolve_device


@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world: int = 1
    threads: int = 1
    amp: bool = False
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return autocast(self.device, self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 autocast (bf16 needs none)."""
        fp16 = self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        return torch.amp.GradScaler("cuda", enabled=fp16)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (a copy on this rank's device)."""
        if not self.distributed:
            return t
        t = t.to(self.device).clone()
        dist.all_reduce(t)
        return t

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def make_context(device: str = "auto", amp: bool = False, threads: int | None = None) -> Context:
    """Resolve the device, join torchrun's process group if launched by it, set threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        n = threads or max(1, (cores or os.cpu_count() or 1) // max(1, local_world))
        torch.set_num_threads(n)
    n_threads = torch.get_num_threads()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Context(dev, rank, world, n_threads, amp and dev.type == "cuda", world > 1)
