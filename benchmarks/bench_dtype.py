"""Deployment dtype: the shipped certified metrics deployed in float64 against float32, side by
side: the time per image of one forward pass (the cost of a decision), and certified accuracy at 36/72/108 /255 on
mini:test in each dtype (what the cost buys). One torch thread, process CPU time, interleaved.

Run: .venv/bin/python benchmarks/bench_dtype.py [--n 600] [--batch 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, median, ratio_line  # noqa: E402

from robustsim.certify import certify_2afc  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402

SHIPPED = ("lipsim-nano-aoc", "lipsim-nano-cert", "lipsim-nano")
EPS = [36 / 255, 72 / 255, 108 / 255]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = open_triplets("mini:test", limit=args.n)
    x = torch.stack([data[i]["ref"] for i in range(args.batch)])
    print(f"load before: {load()}")
    print("| metric | dtype | ms per image (forward) | certified 36/255 | 72/255 | 108/255 |")
    print("|---|---|---|---|---|---|")
    for name in SHIPPED:
        metrics = {dt: load_metric(name, dtype=dt) for dt in ("float32", "float64")}
        with torch.no_grad():
            sides = {dt: (lambda m=m, dt=dt: m.embed(x.to(getattr(torch, dt)))) for dt, m in metrics.items()}
            times = interleaved(sides, repeats=args.repeats)
        for dt, m in metrics.items():
            res = certify_2afc(m, data, EPS, progress=False)
            assert res is not None
            cert = " | ".join(f"{100 * res.certified_at(e):.1f}" for e in EPS)
            print(f"| {name} | {dt} | {1000 * median(times[dt]) / args.batch:.2f} | {cert} |")
        print(f"{name}: float64 / float32 forward time {ratio_line(times, 'float64', 'float32')}")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
