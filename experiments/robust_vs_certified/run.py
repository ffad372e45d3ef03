"""robust_vs_certified: clean, robust (l2 and linf, 3 epsilons each) and certified 2AFC accuracy on `mini`
for l2, ssim, ms-ssim, effnet-ensemble and the shipped certified lipsim-nano: the LipSim paper's central
comparison at CPU scale; plus randomized smoothing of effnet-ensemble at two noise levels, a certificate
for any metric (of the smoothed one), beside lipsim-nano's Lipschitz certificate.

Run from the repo root after `make demo`'s set-up:  .venv/bin/python experiments/robust_vs_certified/run.py
(``--check`` also compares the table with the committed table.md, tolerance 1 point.)
Writes results/robust_vs_certified/{results.json, table.md, robust_l2.png, robust_linf.png} (about 35 min
on 2 CPU cores, most of it the smoothing). Deterministic: fixed seeds, the first N mini:test triplets,
APGD-CE + APGD-margin, fixed noise seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import robustsim
from robustsim.audit import run_audit
from robustsim.certify import certify_smoothed
from robustsim.data import open_triplets
from robustsim.io import write_json
from robustsim.plots import Curve, accuracy_figure, save_figure
from robustsim.threat import ThreatModel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table  # noqa: E402

METRICS = ["l2", "ssim", "ms-ssim", "effnet-ensemble", "lipsim-nano", "lipsim-nano-cert"]
EPS = {"l2": [0.25, 0.5, 1.0], "linf": [1 / 255, 2 / 255, 4 / 255]}
ATTACKS = ["apgd-ce", "apgd-margin"]
SMOOTHED = "effnet-ensemble"
SIGMAS = [0.12, 0.25]


def fmt_eps(norm: str, e: float) -> str:
    return f"{e * 255:g}/255" if norm == "linf" else f"{e:g}"


def table(results: dict) -> str:
    lines = []
    for norm in ("l2", "linf"):
        head = " | ".join(f"robust {fmt_eps(norm, e)}" for e in EPS[norm])
        cert = " | ".join(f"cert. {fmt_eps(norm, e)}" for e in EPS[norm])
        lines += [f"**{norm}**", "", f"| metric | clean | {head} | {cert} |", "|---" * (2 + 2 * len(EPS[norm])) + "|"]
        for m, r in results[norm].items():
            rob = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in r["robust"])
            cer = (
                " | ".join(f"{100 * v:.1f}" for v in r["certified"])
                if r["certified"]
                else " | ".join("-" * 1 for _ in EPS[norm])
            )
            lines.append(f"| {m} | {100 * r['clean']:.1f} | {rob} | {cer} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="first N mini:test triplets")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=128, help="noise samples per triplet for smoothing")
    ap.add_argument("--out", default="results/robust_vs_certified")
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md (1 point)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    results: dict = {"l2": {}, "linf": {}}
    for name in METRICS:
        metric = robustsim.load_metric(name)
        sub = open_triplets("mini:test", limit=args.n)
        for norm in ("l2", "linf"):
            threat = ThreatModel(norm, "ref", tuple(EPS[norm]))
            report = run_audit(metric, sub, threat, ATTACKS, steps=args.steps, batch_size=50, progress=False)
            results[norm][name] = {k: getattr(report, k) for k in ("clean", "robust", "certified", "eps", "n")}
            robust = [round(100 * v, 1) for v in report.robust]
            print(f"{name:16s} {norm:4s} clean {100 * report.clean:.1f} robust {robust}", flush=True)
    for sigma in SIGMAS:  # certificates of the smoothed metric (reference noise, l2 only)
        metric = robustsim.load_metric(SMOOTHED)
        sub = open_triplets("mini:test", limit=args.n)
        res = certify_smoothed(metric, sub, EPS["l2"], sigma, n=args.samples, alpha=0.001, progress=False)
        name = f"{SMOOTHED} smoothed sigma={sigma:g}"
        results["l2"][name] = {
            "clean": res.clean_score,
            "robust": [None] * len(EPS["l2"]),
            "certified": [res.certified_at(e) for e in EPS["l2"]],
            "eps": EPS["l2"],
            "n": len(res.p),
            "abstain_rate": res.details["abstain_rate"],
        }
        print(f"{name}: smoothed clean {100 * res.clean_score:.1f} certified {results['l2'][name]['certified']}")
    write_json(
        out / "results.json",
        {"n": args.n, "steps": args.steps, "attacks": ATTACKS, "smoothing_samples": args.samples, "results": results},
    )
    (out / "table.md").write_text(table(results))
    for norm in ("l2", "linf"):
        curves = []
        for name, r in results[norm].items():
            if "smoothed" in name:  # a certificate of the smoothed metric: its clean point and certified curve
                curves.append(
                    Curve(f"{name} certified (smoothing)", [0.0, *r["eps"]], [r["clean"], *r["certified"]], "-.")
                )
                continue
            curves.append(Curve(f"{name} robust", [0.0, *r["eps"]], [r["clean"], *r["robust"]]))
            if r["certified"]:
                curves.append(Curve(f"{name} certified (Lipschitz)", r["eps"], r["certified"], "--"))
        fig = accuracy_figure(curves, norm, f"mini:test[:{args.n}], APGD-CE + APGD-margin ({args.steps} steps)")
        save_figure(fig, out / f"robust_{norm}.png")
    print(table(results))
    if args.check and not check_table(table(results), HERE / "table.md", tol=1.0):
        sys.exit(1)


if __name__ == "__main__":
    main()
