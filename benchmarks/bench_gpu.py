"""An audit step on a GPU: one APGD step (the 2AFC classifier's forward and backward through the
metric, as `audit` runs it) of a 224 px ViT-B/16 embedding metric at float32 and under bf16 autocast, each as a
ratio to a pure forward+backward of the same network on the same images, and the batch `--batch-size auto` grows
to there. Random weights (the timing does not depend on them; nothing is downloaded). CUDA time with
synchronisation, interleaved medians.

Then whole audits on mini (effnet-lite0, lipsim-nano, dinov2-s14; APGD-CE, l2 0.5 and 1) at fp32 and with bf16 steps
plus the float32 finish, side by side: time, robust accuracy, the batch --batch-size auto grew to.

Run: .venv/bin/python benchmarks/bench_gpu.py [--batch 32] [--repeats 20] [--limit 600] [--steps 20]
     (exits with one line without a GPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--limit", type=int, default=600, help="mini:test triplets of the audits")
    ap.add_argument("--steps", type=int, default=20, help="APGD steps of the audits")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA device here (run it on a machine with one)")
        sys.exit(0)
    from robustsim.attacks.twoafc import TwoAFCClassifier, margin
    from robustsim.metrics.vit import OpenClipMetric

    dev = torch.device("cuda")
    metric = OpenClipMetric(pretrained=False, quick_gelu=False).to(dev).eval().requires_grad_(False)
    g = torch.Generator(device="cpu").manual_seed(0)
    ref, x0, x1 = (torch.rand(args.batch, 3, 224, 224, generator=g).to(dev) for _ in range(3))
    clf = TwoAFCClassifier(metric, ref, x0, x1, "ref")
    x = clf.clean_input()
    y = torch.zeros(args.batch, dtype=torch.long, device=dev)

    def attack_step(dtype: torch.dtype | None) -> None:
        xa = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = -margin(clf(xa), y).float().sum()
        loss.backward()

    def plain(dtype: torch.dtype | None) -> None:
        xa = ref.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = metric._embed(metric.as_input(xa)).float().sum()
        out.backward()

    for fn in (attack_step, plain):
        for d in (None, torch.bfloat16):
            fn(d)  # warm-up (kernels, autotuning)
    sides = {
        "attack fp32": lambda: attack_step(None),
        "forward+backward fp32": lambda: plain(None),
        "attack bf16": lambda: attack_step(torch.bfloat16),
        "forward+backward bf16": lambda: plain(torch.bfloat16),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            times[name] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{torch.cuda.get_device_name(dev)}, ViT-B/16 at 224 px, batch {args.batch}, {args.repeats} interleaved")
    for k, v in med.items():
        print(f"  {k:>24}: {1000 * v:8.1f} ms")
    print(
        f"attack step / forward+backward: fp32 {med['attack fp32'] / med['forward+backward fp32']:.2f}x, "
        f"bf16 {med['attack bf16'] / med['forward+backward bf16']:.2f}x"
    )
    print(f"bf16 / fp32 attack step: {med['attack bf16'] / med['attack fp32']:.2f}x")
    from robustsim.runner import HEADROOM, MemoryProbe, grown_size

    for d in (None, torch.bfloat16):  # what `--batch-size auto` grows this batch to (runner.run_batches' rule)
        probe = MemoryProbe(dev)
        probe.start()
        attack_step(d)
        size = grown_size(args.batch, probe.peak_added(), probe.available(), HEADROOM)
        print(f"--batch-size auto, {'bf16' if d else 'fp32'} attack steps: {size} per batch (measured on {args.batch})")
    audits(args.limit, args.steps)


def audits(limit: int, steps: int) -> None:
    """Whole audits on mini (the offline metrics, APGD-CE, l2 0.5 and 1), fp32 against bf16 steps with the float32
    finish, side by side: wall time, robust accuracy and the batch --batch-size auto grew to."""
    from robustsim.audit import run_audit
    from robustsim.data import open_triplets
    from robustsim.limits import AutoBatch
    from robustsim.threat import ThreatModel
    from robustsim.zoo import load_metric

    threat, data = ThreatModel("l2", "ref", (0.5, 1.0)), open_triplets("mini:test", limit=limit)
    print(f"audits of {limit} mini:test triplets, APGD-CE {steps} steps, l2 0.5 / 1:")
    for name in ("effnet-lite0", "lipsim-nano", "dinov2-s14"):
        metric = load_metric(name, device="cuda")
        for precision in ("fp32", "bf16"):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            report = run_audit(metric, data, threat, ["apgd-ce"], steps=steps, batch_size=AutoBatch(32),
                               device="cuda", precision=precision, progress=False)  # fmt: skip
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            assert report is not None
            fitted = report.runtime.get("batch_size_fitted") or {}
            robust = " / ".join(f"{100 * r:.1f}" for r in report.robust)
            print(f"  {name:>12} {precision}: {secs:6.1f} s, robust {robust}, batches grown to {fitted or 'as given'}")


if __name__ == "__main__":
    main()
