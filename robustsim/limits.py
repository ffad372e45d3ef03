"""Bounds on settings that both the command line and the Python API check (kept free of heavy imports, so
``--help`` and option parsing stay fast)."""

import math
import os

MAX_EOT = 10_000  # gradient draws per attack step (AutoAttack's rand version uses 20)
MAX_SIGMA = 10.0  # smoothing noise std, in [0, 1] pixel units: beyond this the noisy images are noise alone
MAX_BATCH = 1 << 16  # items per batch


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
