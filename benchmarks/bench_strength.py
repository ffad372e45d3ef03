"""Attack strength against the reference, wide: robustsim's APGD-CE against pyautoattack's
APGDAttack on the same 2-logit model (robustsim.attacks.reference), equal iterations, one restart, per triplet, over
seeds: robust counts of each, their spread over seeds (what one run's robust accuracy carries), the triplets on which
the two disagree, and the CPU time ratio.

Run: .venv/bin/python benchmarks/bench_strength.py [--limit 128] [--metrics effnet-lite0,lipsim-nano]
     [--steps 20,100] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--metrics", default="effnet-lite0,lipsim-nano")
    ap.add_argument("--steps", default="20,100")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robustsim.attacks import make_attack
    from robustsim.attacks.reference import reference_apgd
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel
    from robustsim.zoo import load_metric

    data = open_triplets("mini:test", limit=args.limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    head = "| metric | threat | steps | robustsim robust (per seed) | reference robust (per seed) |"
    print(head + " disagreeing triplets | time ours / ref |")
    print("|---|---|---|---|---|---|---|")
    for name in args.metrics.split(","):
        metric = load_metric(name)
        for threat in (ThreatModel("l2", "ref", (0.5,)), ThreatModel("linf", "ref", (4 / 255,))):
            for steps in (int(s) for s in args.steps.split(",")):
                ours, theirs, differ, t_ours, t_ref = [], [], [], 0.0, 0.0
                for seed in seeds:
                    t0 = time.process_time()
                    res = make_attack("apgd-ce", threat, steps=steps, seed=seed)(metric, data, threat, progress=False)
                    t1 = time.process_time()
                    ref = reference_apgd(metric, data, threat, steps, seed)
                    t2 = time.process_time()
                    t_ours, t_ref = t_ours + t1 - t0, t_ref + t2 - t1
                    mine = res.robust[0].cpu()
                    ours.append(int(mine.sum()))
                    theirs.append(int(ref.sum()))
                    differ.append(int((mine != ref).sum()))
                print(
                    f"| {name} | {threat.norm} {threat.labels()[0]} | {steps} | {statistics.mean(ours):.1f} "
                    f"({'/'.join(map(str, ours))}) | {statistics.mean(theirs):.1f} ({'/'.join(map(str, theirs))}) | "
                    f"{'/'.join(map(str, differ))} | {t_ours / t_ref:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
