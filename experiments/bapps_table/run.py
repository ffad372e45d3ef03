"""bapps_table: BAPPS 2AFC per category, in the LPIPS paper's table layout, for a list of metrics.

Real BAPPS:  .venv/bin/python experiments/bapps_table/run.py --bapps /data/bapps [--split val]
Without --bapps it builds a BAPPS-*layout* proxy from the bundled mini:test triplets (mini's distortion
families mapped onto the six categories; labels are mini's synthetic 0/1 judgements, NOT BAPPS) and
runs on that: this is the committed table, regenerated in about 3 minutes on 2 CPU cores.
``--check`` compares the table with the committed table.md (tolerance 0.1 points).

Writes results/bapps_table/{results.json, table.md, bapps_table.png}. Columns follow LPIPS Table 5: distortions
(traditional, CNN-based, their mean) and real algorithms (super-resolution, video deblurring,
colorisation, frame interpolation, their mean), then the mean of all six; "All" columns are means of
the category scores, as the paper averages datasets. The human row is the expected agreement of two
random judges, p^2 + (1 - p)^2 per triplet (100 on hard 0/1 labels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

DISTORTIONS = ["traditional", "cnn"]
REAL = ["superres", "deblur", "color", "frameinterp"]
HEADERS = ["metric", "Trad.", "CNN", "Dist. all", "Super-res", "Deblur", "Color", "Interp.", "Real all", "All"]
METRICS = ["l2", "ssim", "ms-ssim", "effnet-lite0", "effnet-ensemble", "dinov2-s14", "lipsim-nano"]
# mini distortion family -> the BAPPS category it stands in for in the proxy
PROXY_CATEGORIES = {
    "noise": "traditional",
    "jpeg": "traditional",
    "saltpepper": "traditional",
    "posterize": "traditional",
    "contrast": "cnn",
    "saturation": "cnn",
    "brightness": "cnn",
    "pixelate": "superres",
    "blur": "deblur",
    "color": "color",
    "warp": "frameinterp",
}


def write_proxy(root: Path) -> Path:
    """A BAPPS 2afc/val layout built from mini:test (PNG + judge .npy); returns ``root``."""
    from PIL import Image

    from robustsim.data.images import to_uint8_image
    from robustsim.data.mini import mini_triplets

    data = mini_triplets("test")
    for i, family in enumerate(data.groups()):
        item = data[i]
        d = root / "2afc" / "val" / PROXY_CATEGORIES[family]
        for key, sub in (("ref", "ref"), ("x0", "p0"), ("x1", "p1")):
            (d / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8_image(item[key])).save(d / sub / f"{i:06d}.png")
        (d / "judge").mkdir(parents=True, exist_ok=True)
        np.save(d / "judge" / f"{i:06d}.npy", np.array([float(item["p"])], dtype=np.float32))
    return root


def category_scores(metrics: list[str], root: Path, split: str, batch_size: int = 50) -> dict[str, dict[str, float]]:
    """{row: {category: 2AFC score in [0, 1]}} for the human row and every metric."""
    from robustsim.data import open_triplets
    from robustsim.score2afc import evaluate_2afc
    from robustsim.zoo import load_metric

    data = open_triplets(f"bapps:{root}:{split}")
    p = torch.tensor([r.p for r in data.records])
    groups = data.groups()
    human = p**2 + (1 - p) ** 2
    out = {"human": {g: float(human[[x == g for x in groups]].mean()) for g in sorted(set(groups))}}
    for name in metrics:
        metric = load_metric(name)
        sized = open_triplets(f"bapps:{root}:{split}", size=metric.input_size)
        out[name] = evaluate_2afc(metric, sized, batch_size=batch_size).group_scores()
        print(f"{name:16s} " + " ".join(f"{g} {100 * v:.1f}" for g, v in out[name].items()), flush=True)
    return out


def lpips_layout(scores: dict[str, dict[str, float]]) -> str:
    """Markdown table in the LPIPS paper's column order (percent; '-' for a missing category)."""

    def mean(cats: list[str], s: dict[str, float]) -> float | None:
        vals = [s[c] for c in cats if c in s]
        return sum(vals) / len(vals) if vals else None

    rows = []
    for name, s in scores.items():
        cells = [s.get(c) for c in DISTORTIONS] + [mean(DISTORTIONS, s)]
        cells += [s.get(c) for c in REAL] + [mean(REAL, s), mean(DISTORTIONS + REAL, s)]
        rows.append([name, *["-" if v is None else 100 * v for v in cells]])
    return markdown_table(HEADERS, rows)


def figure(scores: dict[str, dict[str, float]], out: Path) -> None:
    """Heat map: 2AFC (%) per metric (rows) and category (columns, the table's order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustsim.plots import save_figure

    cats = [c for c in DISTORTIONS + REAL if any(c in s for s in scores.values())]
    names = list(scores)
    grid = np.array([[100 * scores[n].get(c, np.nan) for c in cats] for n in names])
    fig, ax = plt.subplots(figsize=(1.1 * len(cats) + 2, 0.45 * len(names) + 1.2))
    im = ax.imshow(grid, cmap="cividis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(names)):
        for j in range(len(cats)):
            v = grid[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if v > 60 else "white")  # fmt: skip
    ax.set_xticks(range(len(cats)), cats, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="2AFC (%)")
    ax.set_title("2AFC per BAPPS category", fontsize=9)
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bapps", type=Path, default=None, help="BAPPS root (holds 2afc/); default: the mini proxy")
    ap.add_argument("--split", default="val")
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--out", type=Path, default=Path("results/bapps_table"))
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md (proxy only)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = args.bapps or write_proxy(args.out / "proxy")
    scores = category_scores([m.strip() for m in args.metrics.split(",") if m.strip()], root, args.split)
    text = lpips_layout(scores)
    from robustsim.io import write_json

    write_json(args.out / "results.json", {"bapps": str(root), "proxy": args.bapps is None, "scores": scores})
    (args.out / "table.md").write_text(text)
    figure(scores, args.out / "bapps_table.png")
    print(text)
    if args.check and not check_table(text, HERE / "table.md", tol=0.1):
        sys.exit(1)


if __name__ == "__main__":
    main()
