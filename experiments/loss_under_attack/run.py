"""loss_under_attack: how far can an imperceptible perturbation move a perceptual loss?

For the first N mini:test reference crops (64 px) and l2 radii 36/255, 0.5 and 1 (per 64x64x3 image in
[0, 1] units: an RMS change of 0.3, 1.1 and 2.3 grey levels), the embedding attack (APGD, 100 steps)
maximises d(x, x + delta) for effnet-lite0, LPIPS-alex (random backbone when torchvision's AlexNet
file is absent, as here), MS-SSIM and the certified lipsim-nano, next to random noise of the same
norm and to each loss's *typical* value: the median d(x, weak distortion of x) over the same
triplets (mini's weaker distortion: visible but mild). For lipsim-nano the proven bound
(``certify.embedding_distance_bound``) is reported and checked against every attacked image.
The risk this measures is the DiT + CLIP/LPIPS seed's: a generator trained on such a loss can buy
loss reductions with invisible changes.

Run from the repo root after `make demo`'s set-up:
    .venv/bin/python experiments/loss_under_attack/run.py [--check]
Writes results/loss_under_attack/{results.json, table.md, loss_under_attack.png}; about 3 minutes on
2 CPU cores; deterministic (fixed seeds). ``--check`` compares table.md with the committed one
(tolerance 1e-4 + 2% of each number).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

METRICS = ["effnet-lite0", "lpips-alex", "ms-ssim", "lipsim-nano"]
EPS = [36 / 255, 0.5, 1.0]


def load(name: str):
    """A zoo metric; LPIPS falls back to a random (seeded) backbone when its weights are absent."""
    from robustsim.errors import WeightsError
    from robustsim.metrics.lpips_metric import LPIPSMetric
    from robustsim.zoo import load_metric

    try:
        return load_metric(name), name
    except WeightsError:
        if not name.startswith("lpips-"):
            raise
        torch.manual_seed(0)
        return LPIPSMetric(name.split("-", 1)[1], pretrained=False), f"{name} (random backbone)"


def random_direction(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    from robustsim.attacks import project

    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    delta = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    return project(x + delta, x, torch.full((x.shape[0],), eps), "l2")


def measure(name: str, x: torch.Tensor, weak: torch.Tensor, steps: int) -> dict:
    from robustsim.attacks import embedding_attack
    from robustsim.certify import embedding_distance_bound

    metric, label = load(name)
    metric.eval()
    with torch.no_grad():
        typical = float(metric(x, weak).median())
    row = {"metric": label, "typical": typical, "eps": {}}
    for e in EPS:
        with torch.no_grad():
            d_rand = metric(x, random_direction(x, e, seed=1))
        x_adv, d_adv = embedding_attack(metric, x, e, "l2", steps=steps, seed=0)
        assert ((x_adv - x).flatten(1).norm(dim=1) <= e * (1 + 1e-5) + 1e-6).all()
        cell = {
            "random_mean": float(d_rand.mean()),
            "attack_mean": float(d_adv.mean()),
            "attack_max": float(d_adv.max()),
            "attack_over_typical": float(d_adv.median()) / typical,
            "bound_mean": None,
        }
        if getattr(metric, "lipschitz", None) is not None:
            bound = embedding_distance_bound(metric, x, e)
            if not (d_adv <= bound * (1 + 1e-4) + 1e-7).all():
                raise AssertionError(f"{label}: an attack exceeded the certified bound at eps {e}")
            cell["bound_mean"] = float(bound.mean())
            cell["bound_over_typical"] = float(bound.median()) / typical
        row["eps"][str(e)] = cell
        print(
            f"{label:32s} eps {e:.3g}: typical {typical:.4g} random {cell['random_mean']:.3g} "
            f"attack {cell['attack_mean']:.3g} (x{cell['attack_over_typical']:.2f} typical)",
            flush=True,
        )
    return row


def table(rows: list[dict]) -> str:
    headers = ["metric", "typical d"]
    for e in EPS:
        headers += [f"eps {e:.3g}: random", "attack (mean)", "attack / typical", "certified bound"]
    body = []
    for r in rows:
        cells: list[object] = [r["metric"], f"{r['typical']:.4f}"]
        for e in EPS:
            c = r["eps"][str(e)]
            bound = "-" if c["bound_mean"] is None else f"{c['bound_mean']:.4f}"
            cells += [f"{c['random_mean']:.4f}", f"{c['attack_mean']:.4f}", f"{c['attack_over_typical']:.2f}", bound]
        body.append(cells)
    return markdown_table(headers, body)


def figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustsim.plots import PALETTE, save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(EPS)
    for i, e in enumerate(EPS):
        xs = [j + (i - (len(EPS) - 1) / 2) * width for j in range(len(rows))]
        vals = [r["eps"][str(e)]["attack_over_typical"] for r in rows]
        ax.bar(xs, vals, width, color=PALETTE[i], label=f"attack, l2 eps {e:.3g}")
        for x, r in zip(xs, rows, strict=True):
            b = r["eps"][str(e)].get("bound_over_typical")
            if b is not None:
                ax.plot([x - width / 2, x + width / 2], [b, b], color="#000000", linewidth=2)
    ax.plot([], [], color="#000000", linewidth=2, label="certified bound (lipsim-nano)")
    ax.axhline(1.0, color="#999999", linestyle="--", linewidth=1, label="typical: weak visible distortion")
    ax.set_xticks(range(len(rows)), [r["metric"] for r in rows], fontsize=8)
    ax.set_ylabel("median attacked loss / median loss of a weak distortion")
    ax.set_yscale("log")
    ax.set_title("Perceptual losses under an imperceptible l2 perturbation (mini:test, 64 px)")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="first N mini:test reference crops")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/loss_under_attack"))
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from robustsim.data.mini import mini_triplets
    from robustsim.io import write_json

    data = mini_triplets("test")
    items = [data[i] for i in range(args.n)]
    x = torch.stack([it["ref"] for it in items])
    # the weaker distortion of each triplet: x1 when p = 1 (x1 closer), else x0
    weak = torch.stack([it["x1"] if float(it["p"]) > 0.5 else it["x0"] for it in items])
    rows = [measure(name, x, weak, args.steps) for name in METRICS]
    text = table(rows)
    write_json(args.out / "results.json", {"n": args.n, "steps": args.steps, "eps": EPS, "rows": rows})
    (args.out / "table.md").write_text(text)
    figure(rows, args.out / "loss_under_attack.png")
    print(text)
    if args.check and not check_table(text, HERE / "table.md", tol=1e-4, rel=0.02):
        sys.exit(1)


if __name__ == "__main__":
    main()
