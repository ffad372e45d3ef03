"""``robustsim bench`` throughput: one process (torch's threads chosen by robustsim) vs ``torchrun`` with 2
processes (one thread each, triplets sharded, gathered on rank 0), same metrics, data and protocol; wall
time of the whole command, fresh output folders, runs interleaved and repeated.

Target (issue 16): >= 1.6x throughput with 2 processes on 2 cores.
Run: .venv/bin/python benchmarks/bench_bench.py [--metrics lipsim-nano,effnet-lite0] [--limit 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load, median  # noqa: E402


def run(nproc: int, args, out: Path) -> float:
    base = [
        "-m",
        "robustsim",
        "bench",
        "--metrics",
        args.metrics,
        "--limit",
        str(args.limit),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    cmd = (
        [sys.executable, *base]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *base]
    )
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="lipsim-nano,effnet-lite0")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    print(f"load before {load()}; bench --metrics {args.metrics} --limit {args.limit} (quick protocol)")
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for n in (1, 2):
            times[n].append(run(n, args, work / f"{n}-{r}"))
    shutil.rmtree(work, ignore_errors=True)
    pairs = [a / b for a, b in zip(times[1], times[2], strict=True)]
    print(
        f"one process {median(times[1]):.1f} s, two processes {median(times[2]):.1f} s: throughput ratio "
        f"{median(pairs):.2f}x (pairs {min(pairs):.2f}..{max(pairs):.2f}, n={len(pairs)})"
    )
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
