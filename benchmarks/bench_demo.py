"""The demo's time: `robustsim demo` (what `make demo` runs) in a fresh folder, as a newcomer
runs it, with the wall time, CPU time and the time until the first result row appeared.

Target: the default demo ends within 5 minutes on an idle 2-core machine (`robustsim demo --full` takes longer).
Run: .venv/bin/python benchmarks/bench_demo.py [--full]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROBUSTSIM = str(Path(sys.executable).with_name("robustsim"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        first = None
        cmd = [ROBUSTSIM, "demo", *(["--full"] if args.full else [])]
        with subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if first is None and line.startswith("l2 "):  # the first metric's row of the score table
                    first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    print(
        f"robustsim demo{' --full' if args.full else ''}: exit {proc.returncode}, wall {wall / 60:.1f} min, "
        f"CPU {(usage.ru_utime + usage.ru_stime) / 60:.1f} min, first result row after "
        f"{'-' if first is None else f'{first:.0f} s'} (load average {load:.2f} at the end)"
    )


if __name__ == "__main__":
    main()
