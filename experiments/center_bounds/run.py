"""center_bounds: certified bounds on how far an imperceptible change moves a metric, for any metric.

For the first N mini:test reference crops (64 px) and l2 radii up to 0.2: the center-smoothing bound
(``certify.CenterSmoothing``, sigma 0.25, probability 1 - alpha each) on the move of the smoothed embedding of
effnet-ensemble and dinov2-s14 (metric units: 1 - cos between the smoothed embeddings), beside the Lipschitz
bound of lipsim-nano-aoc's own embedding (``certify.embedding_distance_bound``), and for each the largest
change an attack finds: for the smoothed metrics APGD with EoT on the smoothed output
(``attacks.smoothed_output_attack``, then the centre recomputed at the attacked image), for every metric APGD
on the base metric's d(x, x + delta) (``attacks.embedding_attack``), which no certificate covers for the
smoothed ones. The script fails if any attack exceeds its certificate.

Run from the repo root after `make demo`'s set-up:
    .venv/bin/python experiments/center_bounds/run.py [--check]
Writes results/center_bounds/{results.json, table.md, center_bounds.png}; 48 minutes on 2 CPU cores shared
with other work (dinov2 at 224 px dominates); deterministic (fixed seeds). ``--check`` compares table.md with
the committed one (tolerance 1e-3 + 5% of each number).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

SMOOTHED = ["effnet-ensemble", "dinov2-s14"]
LIPSCHITZ = "lipsim-nano-aoc"
EPS = [0.05, 0.1, 0.15, 0.2]
ATTACKED = [0.1, 0.2]  # radii at which the attacks run (the bounds come at every radius from the same draws)
SIGMA, ALPHA = 0.25, 0.01
SETTINGS = {"n": 300, "n_center": 600, "candidates": 16, "delta": 0.15}


def units(angle: float) -> float:
    """An angle between embeddings as the metric's distance 1 - cos."""
    return 1 - math.cos(min(angle, math.pi))


def smoothed_row(name: str, x: torch.Tensor, steps: int, eot: int) -> dict:
    from robustsim.attacks import embedding_attack, smoothed_output_attack
    from robustsim.certify import CenterSmoothing
    from robustsim.zoo import load_metric

    metric = load_metric(name).eval()
    smooth = CenterSmoothing(metric, SIGMA, alpha=ALPHA, batch=64, **SETTINGS)
    t0 = time.perf_counter()
    got = smooth.certify(x, EPS)
    row = {"metric": f"{name} (smoothed, sigma {SIGMA:g})", "kind": "center smoothing"}
    row["abstain"] = got["abstain"].tolist()
    keep = ~got["abstain"]
    row["bound"] = {str(e): float(got["bound"][keep, j].median()) for j, e in enumerate(EPS)}
    row["attack"], row["base_attack"] = {}, {}
    for e in ATTACKED:
        _, moved = smoothed_output_attack(smooth, x, e, steps=steps, eot=eot, ids=torch.arange(len(x)) + 10_000)
        j = EPS.index(e)
        if not bool((moved[keep] <= got["angle"][keep, j]).all()):
            raise AssertionError(f"{name}: the EoT attack moved the smoothed output past its bound at eps {e}")
        row["attack"][str(e)] = max(units(float(a)) for a in moved[keep])
        _, d = embedding_attack(metric, x, e, "l2", steps=steps, seed=0)
        row["base_attack"][str(e)] = float(d.max())
        print(
            f"{name} eps {e:g}: bound {row['bound'][str(e)]:.4g} attack on smoothed {row['attack'][str(e)]:.4g} "
            f"attack on base {row['base_attack'][str(e)]:.4g}",
            flush=True,
        )
    row["seconds"] = time.perf_counter() - t0
    return row


def lipschitz_row(x: torch.Tensor, steps: int) -> dict:
    from robustsim.attacks import embedding_attack
    from robustsim.certify import embedding_distance_bound
    from robustsim.zoo import load_metric

    metric = load_metric(LIPSCHITZ).eval()
    t0 = time.perf_counter()
    row = {"metric": LIPSCHITZ, "kind": "Lipschitz", "abstain": [False] * len(x), "bound": {}, "attack": {}}
    for e in EPS:
        bound = embedding_distance_bound(metric, x, e)
        row["bound"][str(e)] = float(bound.median())
        if e in ATTACKED:
            _, d = embedding_attack(metric, x, e, "l2", steps=steps, seed=0)
            if not bool((d <= bound).all()):
                raise AssertionError(f"{LIPSCHITZ}: an attack exceeded the Lipschitz bound at eps {e}")
            row["attack"][str(e)] = float(d.max())
    row["base_attack"] = row["attack"]
    row["seconds"] = time.perf_counter() - t0
    return row


def table(rows: list[dict]) -> str:
    headers = ["metric", "certificate", *[f"bound {e:g}" for e in EPS]]
    headers += [f"{what} {e:g}" for e in ATTACKED for what in ("attack (smoothed)", "attack (base)")]
    body = []
    for r in rows:
        cells: list[object] = [r["metric"], r["kind"], *[f"{r['bound'][str(e)]:.4f}" for e in EPS]]
        for e in ATTACKED:
            smoothed = r["attack"][str(e)] if r["kind"] != "Lipschitz" else None
            cells += ["-" if smoothed is None else f"{smoothed:.4f}", f"{r['base_attack'][str(e)]:.4f}"]
        body.append(cells)
    return markdown_table(headers, body)


def figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustsim.plots import PALETTE, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, r in enumerate(rows):
        c = PALETTE[i]
        ax.plot(EPS, [r["bound"][str(e)] for e in EPS], "o-", color=c, label=f"{r['metric']}: {r['kind']} bound")
        if r["kind"] != "Lipschitz":
            ax.plot(
                ATTACKED,
                [r["attack"][str(e)] for e in ATTACKED],
                "s",
                color=c,
                ms=8,
                mfc="none",
                label="  EoT attack on its smoothed output",
            )
        ax.plot(
            ATTACKED,
            [r["base_attack"][str(e)] for e in ATTACKED],
            "x",
            color=c,
            ms=9,
            label="  attack on the base metric",
        )
    ax.set_xlabel("l2 radius eps (64 px images in [0, 1])")
    ax.set_ylabel("change of the metric (1 - cos)")
    ax.set_yscale("log")
    ax.set_title("How far can eps move a metric? certified bounds vs attacks (mini:test)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="first N mini:test reference crops")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/center_bounds"))
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from robustsim.data.mini import mini_triplets
    from robustsim.io import write_json

    data = mini_triplets("test")
    x = torch.stack([data[i]["ref"] for i in range(args.n)])
    rows = [lipschitz_row(x, args.steps)] + [smoothed_row(name, x, args.steps, args.eot) for name in SMOOTHED]
    text = table(rows)
    settings = {"n": args.n, "steps": args.steps, "eot": args.eot, "sigma": SIGMA, "alpha": ALPHA, **SETTINGS}
    write_json(args.out / "results.json", {"settings": settings, "eps": EPS, "rows": rows})
    (args.out / "table.md").write_text(text)
    figure(rows, args.out / "center_bounds.png")
    print(text)
    if args.check and not check_table(text, HERE / "table.md", tol=1e-3, rel=0.05):
        sys.exit(1)


if __name__ == "__main__":
    main()
