"""``robustsim bench`` throughput: ``torchrun`` with 2 processes (one thread each, triplets sharded, gathered
on rank 0) vs one process, same metrics, data and protocol; wall time of the whole command (imports, loading
and the report included), fresh output folders, the three sides interleaved and repeated.

Two baselines, because "one process" means two things on a 2-core machine:
- one process with one thread: one worker, the unit sharding multiplies (the scaling of sharding);
- one process with robustsim's default threads (both cores here): what a user gets without torchrun.
Two processes can beat the second only by what intra-op threading loses, so this prints that too.

Target: >= 1.6x throughput with 2 processes on 2 cores.
Run: .venv/bin/python benchmarks/bench_bench.py [--metrics lipsim-nano,effnet-lite0] [--limit 100] [--repeats 2]
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

SIDES = ("1 process, 1 thread", "1 process, default threads", "2 processes")


def run(side: str, args, out: Path) -> float:
    bench = ["bench", "--metrics", args.metrics, "--limit", str(args.limit), "--out", str(out), "--device", "cpu"]
    if side == SIDES[0]:
        cmd = [sys.executable, "-m", "robustsim", "--threads", "1", *bench]
    elif side == SIDES[1]:
        cmd = [sys.executable, "-m", "robustsim", *bench]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        cmd += ["-m", "robustsim", *bench]
    env = {k: v for k, v in os.environ.items() if k not in ("ROBUSTSIM_THREADS", "OMP_NUM_THREADS")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> str:
    pairs = [a / b for a, b in zip(times[slow], times[fast], strict=True)]
    return f"{median(pairs):.2f}x (pairs {min(pairs):.2f}..{max(pairs):.2f}, n={len(pairs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="lipsim-nano,effnet-lite0")
    ap.add_argument("--limit", type=int, default=100, help="triplets (the quick protocol's 100 by default)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    print(f"load before {load()}; bench --metrics {args.metrics} --limit {args.limit} (quick protocol)")
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    for r in range(args.repeats):
        for i, side in enumerate(SIDES):
            times[side].append(run(side, args, work / f"{i}-{r}"))
    shutil.rmtree(work, ignore_errors=True)
    print(", ".join(f"{s} {median(t):.1f} s" for s, t in times.items()))
    print(f"2 processes vs 1 process, 1 thread (sharding's scaling): {ratio(times, SIDES[0], SIDES[2])}")
    print(f"2 processes vs 1 process, default threads:                {ratio(times, SIDES[1], SIDES[2])}")
    print(f"1 process: default threads vs 1 thread (threads' scaling): {ratio(times, SIDES[0], SIDES[1])}")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
