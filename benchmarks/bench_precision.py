"""bf16 attack steps with the float32 finish against float32 steps, on this machine's CPU: the same
audit (APGD-CE, l2 0.5 and 1, reference moving) with the steps under bf16 autocast (then a float32 APGD from the best
bf16 point for every triplet left standing) and in float32, over several seeds: robust accuracy of each (the mean
over seeds must agree within 1 triplet per 100), the claimed breaks the float32 re-check rejected (none may count),
and the CPU time ratio (a CPU's bf16 is usually slower; the speed-up is a GPU's: benchmarks/bench_gpu.py).

Run: .venv/bin/python benchmarks/bench_precision.py [--limit 100] [--metrics effnet-lite0,lipsim-nano,dinov2-s14]
     [--seeds 0,1,2] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--metrics", default="effnet-lite0,lipsim-nano,dinov2-s14")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robustsim.attacks import make_attack
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel
    from robustsim.zoo import load_metric

    threat = ThreatModel("l2", "ref", (0.5, 1.0))
    data = open_triplets("mini:test", limit=args.limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| metric | precision | robust l2 0.5 (mean over seeds) | robust l2 1 | CPU s per run | per seed |")
    print("|---|---|---|---|---|---|")
    for name in args.metrics.split(","):
        metric = load_metric(name)
        runs: dict[str, list[tuple[list[float], float]]] = {"fp32": [], "bf16": []}
        for seed in seeds:
            for precision in ("fp32", "bf16"):  # interleaved
                att = make_attack("apgd-ce", threat, steps=args.steps, seed=seed, precision=precision)
                t0 = time.process_time()
                res = att(metric, data, threat, progress=False)
                assert res is not None
                runs[precision].append((res.robust_accuracy(), time.process_time() - t0))
        means = {}
        for precision, got in runs.items():
            acc = [statistics.mean(r[i] for r, _ in got) for i in range(2)]
            secs = statistics.mean(s for _, s in got)
            each = " ; ".join("/".join(f"{100 * v:.0f}" for v in r) for r, _ in got)
            means[precision] = (acc, secs)
            row = f"| {name} | {precision} | {100 * acc[0]:.1f} | {100 * acc[1]:.1f} | {secs:.1f} | {each} |"
            print(row, flush=True)
        gap = max(abs(a - b) for a, b in zip(means["fp32"][0], means["bf16"][0], strict=True))
        print(
            f"{name}: |bf16+finish - fp32| = {100 * gap:.2f} points (mean over {len(seeds)} seeds; target <= "
            f"{100 / len(data):.1f}); CPU time bf16+finish / fp32 {means['bf16'][1] / means['fp32'][1]:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
