"""Bounds on settings that both the command line and the Python API check (kept free of heavy imports, so
``--help`` and option parsing stay fast)."""

import math
import os

MAX_EOT = 10_000  # gradient draws per attack step (AutoAttack's rand version uses 20)
MAX_SIGMA = 10.0  # smoothing noise std, in [0, 1] pixel units: beyond this the noisy images are noise alone
MAX_BATCH = 1 << 16  # items per batch
MAX_COUNT = 10**9  # items, steps, epochs, images: more than any run here holds, and what every index type can hold
MAX_SEED = 2**63 - 1  # what torch.manual_seed and numpy's generators both take
MAX_INPUT = 4096  # pixels of a side a network is trained at
MAX_WORKERS = 256  # data-loading processes


class AutoBatch(int):
    """A batch size the runner may grow (``--batch-size auto``): on a GPU the first batch of this size measures
    the memory an item takes and the rest fill the free memory (:func:`robustsim.runner.run_batches`); anywhere
    else, and in any arithmetic, a plain int (it prints as one)."""


def env_int(name: str, default: int, low: int = 0) -> int:
    """An integer from environment variable ``name`` (``default`` when unset or empty), at least ``low``; else a
    one-line RobustsimError naming the variable (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    from robustsim.errors import RobustsimError

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise RobustsimError(f"{name}={raw!r} is not an integer >= {low}; unset it or let torchrun set it")
    return value


def torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, checked together: integers in range, and a world
    of several processes only with the rendezvous torchrun sets (MASTER_ADDR, MASTER_PORT): variables left over in
    a shell are one line naming them, not a ValueError deep in torch."""
    from robustsim.errors import RobustsimError

    world, rank, local = env_int("WORLD_SIZE", 1, 1), env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    local_world = env_int("LOCAL_WORLD_SIZE", world, 1)
    if rank >= world or local >= min(local_world, world):
        raise RobustsimError(
            f"RANK={rank} / LOCAL_RANK={local} is not a process of WORLD_SIZE={world} "
            f"(LOCAL_WORLD_SIZE={local_world}); unset them (leftovers of another job?) or let torchrun set them"
        )
    if world > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
        if missing:
            raise RobustsimError(
                f"WORLD_SIZE={world} but {' and '.join(missing)} unset: leftovers of another job? unset WORLD_SIZE "
                "and RANK, or launch with torchrun"
            )
        if env_int("MASTER_PORT", 0, 1) > 65535:
            raise RobustsimError(f"MASTER_PORT={os.environ['MASTER_PORT']!r} is not a port; let torchrun set it")
    return rank, world, local


def env_seconds(name: str, default: float, error: type[Exception], example: str = "30") -> float:
    """Seconds from environment variable ``name`` (``default`` when unset or empty): a finite number > 0 (and
    under a year), else ``error`` with one line naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 3.2e7):
        raise error(f"{name}={raw!r} is not a number of seconds > 0; unset it or set e.g. {example}")
    return value
