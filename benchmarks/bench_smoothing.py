"""Randomized smoothing cost: certifying one triplet with n noise samples, as a ratio to n
plain forward passes of the base metric's embedding (the least the certificate can cost) in batches of
the same size. One torch thread, process CPU time, interleaved repeats.

Target: <= 1.1x.
Run: .venv/bin/python benchmarks/bench_smoothing.py [--metric effnet-ensemble] [--n 512] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line  # noqa: E402

from robustsim.certify import SmoothedMetric  # noqa: E402
from robustsim.data import open_triplets  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metric", default="effnet-ensemble")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    metric = load_metric(args.metric)
    t = open_triplets("mini", limit=1)[0]
    ref, x0, x1 = (t[k][None] for k in ("ref", "x0", "x1"))
    smooth = SmoothedMetric(metric, 0.25, n=args.n, batch=args.batch)

    @torch.no_grad()
    def plain() -> None:
        for start in range(0, args.n, args.batch):
            metric._embed(ref.expand(min(args.batch, args.n - start), -1, -1, -1) + 0.25 * torch.randn(1))

    print(f"load before {load()}; {args.metric}, n={args.n} samples, batches of {args.batch}, one thread")
    times = interleaved({"certify": lambda: smooth.certify(ref, x0, x1), "plain": plain}, args.repeats)
    print(f"certify one triplet / {args.n} forward passes: {ratio_line(times, 'certify', 'plain')}")
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
