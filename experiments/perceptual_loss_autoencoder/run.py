"""perceptual_loss_autoencoder: one small convolutional autoencoder, trained with different losses.

The MS-SSIM loss paper's setup (Zhao et al., "Loss functions for image restoration") at toy scale:
the same network, initialisation, data order and budget, trained on the bundled photos (the 1500
64 px reference crops of mini:train) with l2, l1, MS-SSIM, the paper's mix 0.84*MS-SSIM + 0.16*l1,
the certified metric lipsim-nano, and the same kind of mix 0.8*lipsim-nano + 0.2*l1, each as a
``robustsim.PerceptualLoss``. Reconstructions of
held-out crops (the first N references of mini:test, other photos) are scored by every metric, and
a side-by-side grid shows them.

Run from the repo root after `make demo`'s set-up:
    .venv/bin/python experiments/perceptual_loss_autoencoder/run.py [--check]
Writes results/perceptual_loss_autoencoder/{results.json, table.md, grid.png}; about 10 minutes on 2 CPU
cores; deterministic (fixed seeds, 2 threads). ``--check`` compares table.md with the committed one
(tolerance 1e-4 + 3% of each number: training is the one place where BLAS differences across CPUs
can add up).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tables import check_table, markdown_table  # noqa: E402

LOSSES = ["l2", "l1", "ms-ssim", "0.84*ms-ssim+0.16*l1", "lipsim-nano", "0.8*lipsim-nano+0.2*l1"]
SCORERS = ["l2", "l1", "ssim", "ms-ssim", "effnet-lite0", "lipsim-nano"]


class AutoEncoder(nn.Module):
    """64x64x3 -> 8x8x16 code (12x fewer numbers) -> 64x64x3 in [0, 1]."""

    def __init__(self, width: int = 32, code: int = 16) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), act,
            nn.Conv2d(width, 2 * width, 4, 2, 1), act,
            nn.Conv2d(2 * width, 2 * width, 4, 2, 1), act,
            nn.Conv2d(2 * width, code, 3, 1, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(code, 2 * width, 3, 1, 1), act,
            nn.ConvTranspose2d(2 * width, 2 * width, 4, 2, 1), act,
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), act,
            nn.ConvTranspose2d(width, width, 4, 2, 1), act,
            nn.Conv2d(width, 3, 3, 1, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train(loss_spec: str, images: torch.Tensor, steps: int, batch: int, seed: int = 0) -> tuple[AutoEncoder, float]:
    """Adam 2e-3 with a cosine schedule; same init and batch order for every loss."""
    from robustsim import PerceptualLoss

    torch.manual_seed(seed)
    model = AutoEncoder()
    loss_fn = PerceptualLoss(loss_spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    order = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=order)
        x = images[idx]
        loss = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  {loss_spec:22s} step {step:4d} loss {float(loss):.4f}", flush=True)
    return model.eval(), time.perf_counter() - t0


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/perceptual_loss_autoencoder"))
    ap.add_argument("--check", action="store_true", help="compare with the committed table.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from robustsim.data.mini import mini_triplets
    from robustsim.io import write_json
    from robustsim.zoo import load_metric

    train_set, test_set = mini_triplets("train"), mini_triplets("test")
    images = torch.stack([train_set[i]["ref"] for i in range(len(train_set))])
    held_out = torch.stack([test_set[i]["ref"] for i in range(args.n_test)])
    scorers = {name: load_metric(name).eval() for name in SCORERS}
    rows, recon, results = [], {}, {}
    for spec in LOSSES:
        model, secs = train(spec, images, args.steps, args.batch)
        with torch.no_grad():
            out = model(held_out)
            scores = {name: float(m(out, held_out).mean()) for name, m in scorers.items()}
        scores["psnr"] = psnr(out, held_out)
        results[spec] = {"scores": scores, "train_seconds": secs}
        recon[spec] = out[:6]
        rows.append([spec, f"{scores['psnr']:.2f}", *[f"{scores[n]:.4f}" for n in SCORERS]])
        print(f"{spec:22s} " + " ".join(f"{k} {v:.4g}" for k, v in scores.items()), flush=True)
    text = markdown_table(["training loss", "PSNR (dB)", *[f"{n} (lower is better)" for n in SCORERS]], rows)
    write_json(args.out / "results.json", {"steps": args.steps, "batch": args.batch, "results": results})
    (args.out / "table.md").write_text(text)
    grid(held_out[:6], recon, args.out / "grid.png")
    print(text)
    if args.check and not check_table(text, HERE / "table.md", tol=1e-4, rel=0.03):
        sys.exit(1)


def grid(originals: torch.Tensor, recon: dict[str, torch.Tensor], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustsim.data.images import to_uint8_image
    from robustsim.plots import save_figure

    rows = [("held-out crop", originals), *recon.items()]
    n = originals.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.5 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(to_uint8_image(imgs[j]))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle("Autoencoder reconstructions by training loss (same network, init and budget)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)


if __name__ == "__main__":
    main()
