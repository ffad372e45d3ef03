"""Kernel time of robustsim's commands: system vs user CPU time and minor page faults of
``score``, ``audit`` and ``bench`` as users run them, with robustsim's allocator settings (robustsim/memory.py)
and with the C library's defaults (``ROBUSTSIM_MALLOC=default``), each command a fresh process, the two sides
interleaved, one thread.

Target: sys <= 10 % of user with the settings.
Run: .venv/bin/python benchmarks/bench_memory.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load  # noqa: E402

ROBUSTSIM = str(Path(sys.executable).with_name("robustsim"))  # the console script users run


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "score effnet-lite0, 300 triplets": ["score", "--metric", "effnet-lite0", "--data", "mini", "--limit", "300"],
        "audit lipsim-nano-aoc l2, 60 triplets, 10 steps": [
            "audit",
            "--metric",
            "lipsim-nano-aoc",
            "--data",
            "mini",
            "--limit",
            "60",
            "--norm",
            "l2",
            "--eps",
            "0.25,0.5",
            "--attacks",
            "apgd-ce",
            "--steps",
            "10",
            "--out",
            str(out / "audit"),
            "--overwrite",
        ],
        "bench quick, ssim + lipsim-nano": [
            "bench",
            "--metrics",
            "ssim,lipsim-nano",
            "--data",
            "mini",
            "--protocol",
            "quick",
            "--out",
            str(out / "b"),
        ],
    }


def run(argv: list[str], malloc: str, out: Path) -> tuple[float, float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ROBUSTSIM_MALLOC=malloc, OMP_NUM_THREADS="1")
    err = out / "stderr.txt"
    with open(err, "wb") as f:
        proc = subprocess.Popen([ROBUSTSIM, "--threads", "1", *argv], env=env, stdout=subprocess.DEVNULL, stderr=f)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.read_text()[-500:]}")
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load before {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp)).items():
            got: dict[str, list[tuple[float, float, int]]] = {"robustsim": [], "glibc default": []}
            for i in range(args.repeats):
                for side, malloc in (("robustsim", ""), ("glibc default", "default")):
                    if name.startswith("bench"):
                        argv = [*argv[:-1], str(Path(tmp) / f"b{side[0]}{i}")]  # a fresh bench folder each run
                    got[side].append(run(argv, malloc, Path(tmp)))
            print(name)
            for side, runs in got.items():
                user, sys_, faults = (statistics.median(r[k] for r in runs) for k in range(3))
                print(
                    f"  {side:>14}: user {user:6.1f} s  sys {sys_:5.1f} s  sys/user {sys_ / user:.2f}  "
                    f"minor faults {faults / 1e6:.2f} M"
                )
            tot = {s: statistics.median(r[0] + r[1] for r in runs) for s, runs in got.items()}
            print(f"  total CPU, glibc default / robustsim: {tot['glibc default'] / tot['robustsim']:.2f}x")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
