"""Our APGD vs pyautoattack's APGD-CE vs foolbox L2PGD on the same metric, triplets, epsilons and
iteration count: seconds per iteration and robust 2AFC accuracy, measured side by side in one run.

Target (issue 5): ours <= 1.0x their time at equal or lower robust accuracy.
Run: .venv/bin/python benchmarks/bench_attacks.py [--metric effnet-lite0] [--n 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from robustsim.attacks import APGD, FoolboxAttack, make_attack
from torch.utils.data import Subset

import robustsim
from robustsim.data import open_triplets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metric", default="effnet-lite0")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", default="0.25,0.5")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import foolbox as fb

    metric = robustsim.load_metric(args.metric)
    data = open_triplets("mini")
    sub = Subset(data, range(args.n))
    sub.name = data.name  # type: ignore[attr-defined]
    eps = [float(e) for e in args.eps.split(",")]
    attacks = {
        "robustsim APGD-CE": APGD("l2", "ce", steps=args.steps),
        "robustsim APGD-margin": APGD("l2", "margin", steps=args.steps),
        "pyautoattack APGD-CE": make_attack("aa-apgd-ce", "l2", steps=args.steps),
        "foolbox L2PGD": FoolboxAttack(fb.attacks.L2PGD(steps=args.steps), "l2"),
    }
    rows = {}
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        res = attack(metric, sub, eps, batch_size=args.n, progress=False)
        sec = time.perf_counter() - t0
        rows[name] = (sec / (args.steps * len(eps)), res.robust_accuracy(), res.clean_accuracy)
    base = rows["robustsim APGD-CE"][0]
    print(f"{args.metric} on mini:test[:{args.n}], l2 eps {eps}, {args.steps} iterations, 2 CPU threads")
    print(f"{'attack':<24}{'s/iter':>8}{'time vs ours':>14}  clean   robust@eps")
    for name, (spi, rob, clean) in rows.items():
        robust = "  ".join(f"{100 * r:5.1f}" for r in rob)
        print(f"{name:<24}{spi:8.3f}{spi / base:13.2f}x  {100 * clean:5.1f}   {robust}")


if __name__ == "__main__":
    main()
