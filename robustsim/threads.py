"""How many threads torch should use: the CPUs this process may really use, shared fairly.

A shared CPU is the normal case for robustsim's users (a laptop, a CI runner, a cgroup-limited
container, several ``torchrun`` processes). torch's default is the host's core count, and its OpenMP
threads wait for one another at every parallel region: when another job holds a core, each region
waits for a descheduled thread, and small-tensor work (an l2 audit) ran 55x slower than on one thread.
So the default here is

    threads = max(1, (usable CPUs - CPUs busy with other work now) // processes on this node)

with usable CPUs = the affinity mask intersected with the cgroup CPU quota, CPUs busy now = the
runnable tasks of ``/proc/loadavg`` other than this process and its torchrun siblings, and processes
= ``LOCAL_WORLD_SIZE``. ``--threads N`` or ``ROBUSTSIM_THREADS=N`` override it. The count is chosen
when a command starts; reports record it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from robustsim.errors import RobustsimError
from robustsim.limits import env_int


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 2.0), or None when unlimited / unknown.
    Reads cgroup v2 ``cpu.max`` (along the process's own cgroup path up to the root) or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    rel = ""
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            rel = parts[2].lstrip("/")
    folder = root / rel if rel else root
    limits = []
    while True:
        raw = _read(folder / "cpu.max")
        if raw:
            quota, _, period = raw.partition(" ")
            if quota != "max" and period:
                try:
                    limits.append(int(quota) / int(period))
                except ValueError:
                    pass
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota and period and quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
        limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def busy_elsewhere(local_world: int = 1, loadavg: Path = Path("/proc/loadavg")) -> int:
    """Runnable tasks right now besides this process and its ``local_world - 1`` siblings (0 if unknown)."""
    text = _read(loadavg)
    try:
        running = int(text.split()[3].split("/")[0]) if text else 1
    except (IndexError, ValueError):
        return 0
    return max(0, running - local_world)


def default_threads() -> int:
    """The thread count described in the module docstring."""
    world = env_int("LOCAL_WORLD_SIZE", 1, 1)
    free = usable_cpus() - min(busy_elsewhere(world), usable_cpus() - 1)
    return max(1, free // world)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, else ``ROBUSTSIM_THREADS``, else :func:`default_threads`.
    Returns the count set."""
    if threads is None:
        env = os.environ.get("ROBUSTSIM_THREADS", "").strip()
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise RobustsimError(f"ROBUSTSIM_THREADS={env!r} is not an integer; unset it or give e.g. 2") from None
    if threads is not None and threads < 1:
        raise RobustsimError(f"the thread count must be >= 1, got {threads}")
    n = threads if threads is not None else default_threads()
    global _CHOSEN
    torch.set_num_threads(n)
    _CHOSEN = threads is None
    _USED.add(n)
    return n


_CHOSEN = False  # True once configure_threads chose the count itself (nothing pinned it)
_USED: set[int] = set()  # every count a run has used


def follow_machine() -> int:
    """Between a run's sections, cells and epochs: where robustsim chose the thread count (no ``--threads`` or
    ``ROBUSTSIM_THREADS``), choose it again from the machine's load now (one read of /proc/loadavg), so a run
    started beside other work speeds up once that work ends. Returns the count in use; a count the caller set
    (or a library caller who never let robustsim choose) is left alone."""
    if _CHOSEN:
        n = default_threads()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        _USED.add(n)
    return torch.get_num_threads()


REPRODUCIBILITY = (
    "bit-identical for the same seed and thread count; across thread counts, pixel metrics and the shipped "
    "LipSim nets give the same results, while convolutions through oneDNN round differently (~1e-7), which an "
    "attack can amplify into a few different triplets"
)


def _fitted_batches() -> dict[str, int]:
    """The runs whose batch size changed to fit the device's memory (robustsim.runner: grown to a GPU's free
    memory, or halved on running out), by description."""
    import sys

    runner = sys.modules.get("robustsim.runner")
    return dict(getattr(runner, "FITTED", {}))


def runtime_info(device: str | torch.device | None = None) -> dict:
    """What a report records about where it ran: torch threads, device, torch version, and what is
    reproducible across thread counts."""
    return {
        "reproducibility": REPRODUCIBILITY,
        "threads": torch.get_num_threads(),
        "threads_used": sorted(_USED | {torch.get_num_threads()}),
        "batch_size_fitted": _fitted_batches(),
        "device": str(device) if device is not None else None,
        "torch": torch.__version__,
    }
