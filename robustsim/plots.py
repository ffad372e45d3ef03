"""Figures (matplotlib, Agg): accuracy-vs-epsilon curves and adversarial example grids.

One function draws every curve figure (audit, certify and ``robustsim plot`` call it), with the
Okabe-Ito colour-blind-safe palette, labelled axes, units and a legend. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from robustsim.io import atomic_path  # noqa: E402
from robustsim.threat import ThreatModel  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STYLES = ["-", "--", "-.", ":"]


@dataclass
class Curve:
    label: str
    eps: Sequence[float]
    values: Sequence[float]  # accuracies in [0, 1]
    style: str | None = None
    color: int | None = None  # palette index; default: the curve's position


def eps_label(norm: str) -> str:
    return "epsilon (l2)" if norm == "l2" else "epsilon (linf, x 1/255)"


def _x(eps: Sequence[float], norm: str) -> list[float]:
    return [e * 255 if norm == "linf" else e for e in eps]


def save_figure(fig: plt.Figure, out: str | os.PathLike) -> Path:
    """Save PNG (and PDF when ``out`` ends in .pdf) atomically; closes the figure."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def accuracy_figure(curves: Sequence[Curve], norm: str, title: str, ylabel: str = "2AFC accuracy (%)") -> plt.Figure:
    """One line per curve: accuracy (%) against epsilon in the field's units."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, c in enumerate(curves):
        ax.plot(
            _x(c.eps, norm),
            [100 * v for v in c.values],
            c.style or STYLES[(i // len(OKABE_ITO)) % 4],
            marker="o",
            color=OKABE_ITO[(i if c.color is None else c.color) % len(OKABE_ITO)],
            label=c.label,
            linewidth=2,
        )
    ax.set_xlabel(eps_label(norm))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def radius_histogram(radii: dict[str, Sequence[float]], title: str) -> plt.Figure:
    """Histogram of certified l2 radii, one series per metric."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, r) in enumerate(radii.items()):
        ax.hist(list(r), bins=30, alpha=0.6, color=OKABE_ITO[i % len(OKABE_ITO)], label=label)
    ax.set_xlabel("certified radius (l2)")
    ax.set_ylabel("triplets")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def example_grid(
    ref: torch.Tensor, adv: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, threat: ThreatModel
) -> plt.Figure:
    """Rows = triplets; columns = ref, adversarial ref at each epsilon of ``threat``, x0, x1."""
    from robustsim.data.images import to_uint8_image

    n, eps = ref.shape[0], threat.eps
    cols = ["ref", *[f"adv eps={threat.label(e)}" for e in eps], "x0", "x1"]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
    for i in range(n):
        imgs = [ref[i], *[adv[k, i] for k in range(len(eps))], x0[i], x1[i]]
        for j, img in enumerate(imgs):
            ax = axes[i][j]
            ax.imshow(to_uint8_image(img if img.shape[0] == 3 else img[:3]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.tight_layout()
    return fig


LABEL_COLOURS = {1: "#009E73", 0: "#D55E00", -1: "#999999"}  # positive, negative, unannotated


def retrieval_grid(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, Sequence[int]]]) -> plt.Figure:
    """One row per (title, query image, top-k images (k, 3, H, W), labels of the top-k): the query,
    then its ranked results framed green (annotated similar), vermillion (not similar) or grey
    (unannotated)."""
    from robustsim.data.images import to_uint8_image

    k = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(rows)), squeeze=False)
    for i, (title, query, top, labels) in enumerate(rows):
        for j in range(k + 1):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.imshow(to_uint8_image(query))
                ax.set_ylabel(title, fontsize=7)
                colour, width = "#000000", 1.0
            elif j - 1 < len(top):
                ax.imshow(to_uint8_image(top[j - 1]))
                colour, width = LABEL_COLOURS[int(labels[j - 1])], 3.0
            else:
                ax.axis("off")
                continue
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
            if i == 0:
                ax.set_title("query" if j == 0 else f"#{j}", fontsize=7)
    fig.suptitle("green: similar, vermillion: not similar, grey: unannotated", fontsize=8)
    fig.tight_layout()
    return fig
