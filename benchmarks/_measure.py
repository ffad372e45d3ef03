"""The measuring rules every benchmark here follows: the two sides interleaved (A B A B ...), each
side repeated, the median ratio printed with its spread (min..max of the per-pair ratios), and the
machine's load average before and after, so a reader can tell a quiet run from a noisy one.

``clock="cpu"`` measures this process's CPU time (user + system, children included), which other
jobs on the machine barely change; ``clock="wall"`` measures elapsed time, for questions where
waiting is the point (threads contending with other jobs).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable


def cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def interleaved(
    sides: dict[str, Callable[[], object]], repeats: int = 9, clock: str = "cpu", warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per run of each side, the sides alternating within every repeat (after ``warmup`` runs
    of each, not timed)."""
    now = cpu_seconds if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = now()
            fn()
            times[name].append(now() - t0)
    return times


def ratio_line(times: dict[str, list[float]], ours: str, base: str) -> str:
    """'median ratio ours/base (spread lo..hi over N pairs)'."""
    pairs = [a / b for a, b in zip(times[ours], times[base], strict=True) if b > 0]
    med = statistics.median(pairs)
    return f"{med:.2f}x (pairs {min(pairs):.2f}..{max(pairs):.2f}, n={len(pairs)})"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def triplet_args(description: str):
    """The options the certified-metric benchmarks share (--metric, --n, --batch, --repeats), parsed."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--metric", default="lipsim-nano-aoc")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    return ap.parse_args()


def triplet_batches(data, batch: int) -> list:
    """[ref, x0, x1] tensors of ``data``'s triplets in consecutive batches of ``batch``."""
    import torch

    out = []
    for s in range(0, len(data), batch):
        rows = range(s, min(s + batch, len(data)))
        out.append([torch.stack([data[i][k] for i in rows]) for k in ("ref", "x0", "x1")])
    return out
