"""bf16 attack steps against float32 (issue 30 item 2), on this machine's CPU: the same audit (APGD-CE, l2 0.5 and 1,
reference moving) with the steps under bf16 autocast and in float32, side by side: robust accuracy of each, the
claimed breaks the float32 re-check rejected (a bf16 break must be a float32 break: it is re-checked), and the
CPU time ratio (a CPU's bf16 is usually slower; the speed-up is a GPU's: benchmarks/bench_gpu.py).

Run: .venv/bin/python benchmarks/bench_precision.py [--limit 100] [--metrics lipsim-nano,effnet-lite0]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--metrics", default="lipsim-nano,effnet-lite0")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robustsim.attacks import make_attack
    from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin

    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel
    from robustsim.zoo import load_metric

    threat = ThreatModel("l2", "ref", (0.5, 1.0))
    data = open_triplets("mini:test", limit=args.limit)
    for name in args.metrics.split(","):
        metric = load_metric(name)
        seen: dict[str, tuple[list[float], float, int]] = {}
        for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved; the second of each is kept
            att = make_attack("apgd-ce", threat, steps=args.steps)
            att.precision = precision
            t0 = time.process_time()
            res = att(metric, data, threat, progress=False, n_examples=len(data))
            secs = time.process_time() - t0
            assert res is not None
            ex = res.examples
            y, _ = labels_from_p(torch.stack([data[int(i)]["p"] for i in ex["index"]]))
            clf = TwoAFCClassifier(metric, ex["ref"], ex["x0"], ex["x1"])
            rejected = 0
            with torch.no_grad():
                for i in range(len(threat.eps)):
                    broken = res.clean & ~res.robust[i]
                    rejected += int((broken & (margin(clf(ex["adv"][i]), y) > 0)).sum())
            seen[precision] = (res.robust_accuracy(), secs, rejected)
        (r32, s32, _), (r16, s16, bad) = seen["fp32"], seen["bf16"]
        print(
            f"{name}, {len(data)} triplets: robust at l2 0.5 / 1: fp32 {100 * r32[0]:.1f} / {100 * r32[1]:.1f}, "
            f"bf16 {100 * r16[0]:.1f} / {100 * r16[1]:.1f}; bf16-reported breaks float32 does not confirm: {bad}; "
            f"CPU time bf16 / fp32 {s16 / s32:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
