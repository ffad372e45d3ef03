"""Process groups for ``torchrun`` (DDP training, sharded evaluation): gloo on CPU, nccl on CUDA; a no-op for
one process. Evaluation shards triplets over ranks and gathers per-triplet results on rank 0."""

from __future__ import annotations

import datetime
import gc
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustsim.errors import InputError
from robustsim.limits import env_int, env_seconds, torchrun_env


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
    _, world, local = torchrun_env()
    if world == 1:
        return DistEnv(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, device)


DEFAULT_TIMEOUT_S = 300.0  # a rank that does not answer a collective for 5 minutes has stopped (torch: 30 min)


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for every rank: ``ROBUSTSIM_DIST_TIMEOUT`` seconds (default 300), so a rank
    stopped with kill -STOP ends the run with torch's error naming the collective instead of half an hour of
    silence."""
    seconds = env_seconds("ROBUSTSIM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S, InputError, example="300")
    return datetime.timedelta(seconds=seconds)


def all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over processes (identity for one process)."""
    if env.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / env.world


def barrier(env: DistEnv) -> None:
    """Wait for every rank. On gloo, rank 0 names the ranks that did not arrive within the collective timeout
    (``monitored_barrier``)."""
    if env.world > 1:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=collective_timeout(), wait_all_ranks=True)
        else:
            dist.barrier()


def timeout_message(err: BaseException) -> str | None:
    """One line for a collective that timed out (None for any other error): this rank, the wait, which ranks
    did not answer where the backend says, and the variable that sets the wait."""
    text = str(err)
    if not any(s in text for s in ("Timed out", "wait timeout", "failed to pass monitoredBarrier")):
        return None
    rank = dist.get_rank() if dist.is_initialized() else env_int("RANK", 0)
    ranks = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", text)
    who = f"rank(s) {ranks.group(1).strip()} stopped answering" if ranks else "another rank stopped answering"
    wait = collective_timeout().total_seconds()
    return (
        f"rank {rank}: {who} (no reply within {wait:g} s; kill -STOP, a crash or a hung device?); the run is "
        "ended. ROBUSTSIM_DIST_TIMEOUT sets the wait"
    )


def shutdown(env: DistEnv) -> None:
    """Leave the process group while the interpreter is fully alive (gloo's threads must not outlive it);
    a collected DDP reducer goes first, so nothing holds the group when it is destroyed."""
    if env.world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def local_env(device: torch.device | str = "cpu") -> DistEnv:
    """A one-process environment: for work that is already a rank's share (no further sharding)."""
    return DistEnv(0, 1, 0, torch.device(device))


def env_from_os(device: torch.device | str = "cpu") -> DistEnv:
    """The process's place without joining a group (rank 0 of 1 outside torchrun)."""
    rank, world, local = torchrun_env()
    return DistEnv(rank, world, local, torch.device(device))


def shard_indices(n: int, env: DistEnv) -> list[int]:
    """The triplets this rank evaluates: every ``world``-th one from ``rank`` (interleaved, so early-stopping
    attacks leave every rank a similar amount of work)."""
    return list(range(env.rank, n, env.world))


def shard(data, env: DistEnv):
    """(this rank's share of ``data``, their indices in ``data``): ``data.select`` of :func:`shard_indices`
    under torchrun, ``data`` itself for one process."""
    mine = shard_indices(len(data), env)
    return (data.select(mine) if env.world > 1 else data), mine


def gather_rows(t: torch.Tensor, indices: list[int], n: int, env: DistEnv, dim: int = 0) -> torch.Tensor | None:
    """On rank 0: the (..., n, ...) tensor assembled from every rank's rows (``indices``, along ``dim``) in the
    original order; None on the other ranks. The identity for one process."""
    if env.world == 1:
        return t
    parts: list = [None] * env.world
    dist.all_gather_object(parts, (indices, t.cpu()))
    if not env.main:
        return None
    shape = list(t.shape)
    shape[dim] = n
    out = torch.empty(shape, dtype=t.dtype)
    for idx, part in parts:
        out.index_copy_(dim, torch.tensor(idx, dtype=torch.long), part)
    return out


def gather_objects(obj: object, env: DistEnv) -> list | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere)."""
    if env.world == 1:
        return [obj]
    parts: list = [None] * env.world
    dist.all_gather_object(parts, obj)
    return parts if env.main else None


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's ``obj`` on every rank (so every rank agrees on what work is left)."""
    if env.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
