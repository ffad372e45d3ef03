"""Estimated against measured time for the documented examples: each command runs as a user runs
it; the estimate is the "estimated cost: about X" line it prints before it starts, the measured time runs from that
line to the command's exit (the model load and the calibration before the line are not part of the estimate). The
ratio measured / estimated must lie in [0.5, 2] for every row.

Run: .venv/bin/python benchmarks/bench_estimates.py [--only audit-lipsim,...] [--list]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROBUSTSIM = str(Path(sys.executable).with_name("robustsim"))
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "days": 86400.0}
# name -> argv (the docs' commands; sizes cut with --limit where the documented run takes hours on 2 cores)
CASES = {
    "audit-effnet": "audit --metric effnet-lite0 --data mini --norm l2 --eps 0.5,1 --limit 100",  # README
    "audit-lipsim": "audit --metric lipsim-nano-aoc --data mini --limit 50 --eps 0.25,0.5",  # quickstart
    "audit-linf": "audit --metric l2 --data mini --norm linf --eps 1/255,2/255,4/255 --steps 50",  # audit.md
    "audit-smoothed": "audit --metric ssim --data mini:test --limit 20 --smoothing 0.1 --eot 8 --steps 10 "
    "--attacks apgd-ce --eps 0.25,0.5",  # audit.md (n = 100 there)
    "certify-lipschitz": "certify --metric lipsim-nano-aoc --data mini",  # certify.md, make demo
    "certify-smoothing": "certify --metric effnet-lite0 --data mini --method smoothing --sigma 0.25 --n 128 "
    "--limit 10",  # certify.md (effnet-ensemble, n 512, 600 triplets there: hours)
    "certify-center": "certify --method center-smoothing --metric ssim --data mini:test --limit 20 --sigma 0.1 "
    "--eps 0.02,0.05,0.1",  # certify.md
    "bench": "bench --metrics l2,lipsim-nano,effnet-lite0 --data mini --limit 50 --out {tmp}/bench",  # bench.md
    "bench-cached": "bench --metrics l2,lipsim-nano,effnet-lite0 --data mini --limit 50 --out {tmp}/bench",
    "bench-smoothing": "bench --metrics l2,lipsim-nano --data mini --limit 50 --smoothing 0.25 --out {tmp}/bench",
}
ESTIMATE = re.compile(r"estimated cost: about ([\d.]+) (s|min|h|days)")


def run(argv: list[str]) -> tuple[float | None, float, float, list[str]]:
    """(estimated seconds summed over the estimate lines, seconds from the first estimate line to the exit, seconds
    of the whole command, the lines printed on stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([ROBUSTSIM, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    first: list[float] = []
    estimated: list[float] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            for part in line.replace("\r", "\n").splitlines():
                lines.append(part)
                m = ESTIMATE.search(part)
                if m and not part.startswith("all metrics"):
                    first.append(time.perf_counter())
                    estimated.append(float(m.group(1)) * UNITS[m.group(2)])

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait()
    reader.join()
    end = time.perf_counter()
    if proc.returncode:
        raise SystemExit(f"robustsim {' '.join(argv)} failed ({proc.returncode}): {lines[-3:]}")
    start = first[0] if first else end
    return (sum(estimated) if estimated else None), end - start, end - t0, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated case names (default: all, in order)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, cmd in CASES.items():
            print(f"{name}: robustsim {cmd}")
        return
    names = [n for n in (args.only.split(",") if args.only else CASES) if n]
    print("| example | command | estimated | measured | measured / estimated |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            argv = CASES[name].format(tmp=tmp).split()
            estimated, measured, whole, lines = run(argv)
            cmd = " ".join(argv).replace(tmp, "TMP")
            if estimated is None:  # every cell saved: the command said so and computed nothing
                said = next((ln for ln in lines if "nothing to compute" in ln), "no estimate printed")
                print(f"| {name} | `robustsim {cmd}` | {said.split(': ', 1)[-1]} | {whole:.0f} s in all | - |")
                continue
            ratio = measured / estimated if estimated else float("inf")
            flag = "" if 0.5 <= ratio <= 2 else " (outside 2x)"
            print(f"| {name} | `robustsim {cmd}` | {estimated:.0f} s | {measured:.0f} s | {ratio:.2f}{flag} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
