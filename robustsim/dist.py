"""Process-group set-up for ``torchrun``: DDP with gloo on CPU and nccl on CUDA; a no-op for one process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; ``world == 1`` outside torchrun."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (one GPU per local rank on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistEnv(0, 1, 0, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, device)


def all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over processes (identity for one process)."""
    if env.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / env.world


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group while the interpreter is fully alive (gloo's threads must not outlive it);
    a collected DDP reducer goes first, so nothing holds the group when it is destroyed."""
    if env.world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
