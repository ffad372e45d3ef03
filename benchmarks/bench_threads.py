"""Default thread choice vs one thread, on an idle machine and beside a CPU hog.

Each workload runs in this process with torch's threads set the way the CLI sets them: the default
(``robustsim.threads.default_threads``: usable CPUs less those busy elsewhere) or exactly 1; torch's
own choice (one thread per core) is shown beside them. Wall time, interleaved runs. Target: beside a
hog the default is never slower than one thread by more than 1.2x.

Run: .venv/bin/python benchmarks/bench_threads.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line  # noqa: E402

from robustsim.audit import run_audit  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.score2afc import evaluate_2afc  # noqa: E402
from robustsim.threads import configure_threads, usable_cpus  # noqa: E402
from robustsim.threat import ThreatModel  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402


def workloads() -> dict[str, object]:
    l2, nano, eff = load_metric("l2"), load_metric("lipsim-nano"), load_metric("effnet-lite0")
    mini, mini64 = open_triplets("mini", limit=50), open_triplets("mini", size=64)
    eff_data = open_triplets("mini", limit=96)
    return {
        "l2 audit, 50 triplets, 20 steps": lambda: run_audit(
            l2, mini, ThreatModel("l2", "ref", (0.5, 1.0)), ["apgd-ce"], steps=20, batch_size=50, progress=False
        ),
        "lipsim-nano score, 600 triplets": lambda: evaluate_2afc(nano, mini64, batch_size=64, progress=False),
        "effnet-lite0 score, 96 triplets": lambda: evaluate_2afc(eff, eff_data, batch_size=32, progress=False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    jobs = workloads()
    for hog in (False, True):
        proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if hog else None
        try:
            print(f"\n== {'beside a CPU hog (yes > /dev/null)' if hog else 'idle machine'}; load before {load()}")
            for name, job in jobs.items():
                chosen = []

                def default(job=job, chosen=chosen) -> None:
                    chosen.append(configure_threads(None))
                    job()

                def one(job=job) -> None:
                    configure_threads(1)
                    job()

                def per_core(job=job) -> None:  # torch's own default: one thread per usable core
                    configure_threads(usable_cpus())
                    job()

                times = interleaved({"default": default, "one": one, "per-core": per_core}, args.repeats, clock="wall")
                print(
                    f"{name}: default ({sorted(set(chosen))} threads) / one thread = "
                    f"{ratio_line(times, 'default', 'one')}; one per core / one thread = "
                    f"{ratio_line(times, 'per-core', 'one')}; one thread {min(times['one']):.2f} s"
                )
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    print(f"\nload after {load()}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
