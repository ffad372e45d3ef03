"""Figures (matplotlib, Agg): accuracy-vs-epsilon curves and adversarial example grids.

One function draws every curve figure (audit, certify and ``robustsim plot`` call it), with a
colour-blind-safe palette readable on white, labelled axes, units and a legend. Files are written atomically.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from robustsim.ball import ball  # noqa: E402
from robustsim.io import atomic_path  # noqa: E402
from robustsim.threat import ThreatModel  # noqa: E402

# Okabe-Ito's colour-blind-safe hues, the light ones (orange, sky blue, yellow) swapped for darker ones of distinct
# hue (ochre, indigo, wine): every series has a contrast of at least 3:1 against the white background
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8B6A00", "#332288", "#000000", "#882255"]
STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def series_style(i: int) -> tuple[str, str]:
    """(colour, marker) of series i: 8 colours x 8 markers, so no two of 64 series look alike."""
    return PALETTE[i % len(PALETTE)], MARKERS[(i // len(PALETTE) + i) % len(MARKERS)]


def legend_outside(ax) -> None:
    """The legend right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


@dataclass
class Curve:
    label: str
    eps: Sequence[float]
    values: Sequence[float]  # accuracies in [0, 1]
    style: str | None = None
    color: int | None = None  # palette index; default: the curve's position


def eps_label(norm: str) -> str:
    return ball(norm).axis_label


def _x(eps: Sequence[float], norm: str) -> list[float]:
    return [ball(norm).axis_value(e) for e in eps]


def save_figure(fig: plt.Figure, out: str | os.PathLike, within: str | os.PathLike | None = None) -> Path:
    """Save PNG (and PDF when ``out`` ends in .pdf) atomically; closes the figure. ``within``: a run's own file
    (:func:`robustsim.io.atomic_path`)."""
    out = Path(out)
    try:
        with atomic_path(out, within) as tmp:
            fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def plain_text(build: Callable[..., Any]) -> Callable[..., Any]:
    """A figure builder whose texts (titles, labels, legends: metric names, file names) are shown as written:
    matplotlib parses no mathtext from them (a ``$`` in a name is a dollar sign, never a parse error)."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context({"text.parse_math": False}):
            return build(*args, **kwargs)

    return wrapper


@plain_text
def accuracy_figure(
    curves: Sequence[Curve], norm: str, title: str, ylabel: str = "2AFC accuracy (%)", percent: bool = True
) -> plt.Figure:
    """One line per curve: accuracy (%) against epsilon in the field's units (``percent=False``: the values as they
    are, e.g. a distance bound, the y axis from 0). Every series has its own marker (and a curve identical to an
    earlier one says so in the legend and is drawn thinner on top, so neither hides the other); the legend sits
    right of the axes."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    draw_curves(ax, curves, norm, title, ylabel, percent)
    return fig


def draw_curves(ax, curves: Sequence[Curve], norm: str, title: str, ylabel: str, percent: bool = True) -> None:
    """:func:`accuracy_figure`'s drawing, on given axes (a figure of several panels)."""
    drawn: list[tuple[tuple, str]] = []
    for i, c in enumerate(curves):
        xs, ys = _x(c.eps, norm), [100 * v if percent else v for v in c.values]
        same = next((label for key, label in drawn if key == (tuple(xs), tuple(ys))), None)
        colour = PALETTE[(i if c.color is None else c.color) % len(PALETTE)]
        ax.plot(
            xs,
            ys,
            c.style or STYLES[(i // len(PALETTE)) % 4],
            marker=MARKERS[i % len(MARKERS)],
            markersize=4 if same else 7,
            markerfacecolor="white" if same else colour,
            color=colour,
            label=c.label + (f" (same as {same})" if same else ""),
            linewidth=1.2 if same else 2.2,
            zorder=3 + i,
        )
        drawn.append(((tuple(xs), tuple(ys)), c.label))
    ax.set_xlabel(eps_label(norm))
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(-2, 102)
    else:
        top = max((v for c in curves for v in c.values if v is not None and math.isfinite(v)), default=1.0)
        ax.set_ylim(0, 1.08 * top if top > 0 else 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_outside(ax)


@plain_text
def radius_histogram(radii: dict[str, Sequence[float]], title: str) -> plt.Figure:
    """Histogram of certified l2 radii, one series per metric."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, r) in enumerate(radii.items()):
        ax.hist(list(r), bins=30, alpha=0.6, color=PALETTE[i % len(PALETTE)], label=label)
    ax.set_xlabel("certified radius (l2)")
    ax.set_ylabel("triplets")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


@plain_text
def example_grid(
    ref: torch.Tensor,
    adv: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    threat: ThreatModel,
    info: dict[str, torch.Tensor] | None = None,
) -> plt.Figure:
    """Rows = triplets; columns = ref, adversarial ref at each epsilon of ``threat``, x0, x1. With ``info``
    (:func:`robustsim.audit.example_info`) every image says what to look at: the triplet id, its human label p
    (the share who found x1 closer) and d(ref, x0) / d(ref, x1) clean, and for each attacked image the
    perturbation's norm, the distances after, and FLIPPED (framed red) where the decision changed."""
    from robustsim.data.images import to_uint8_image

    n, eps = ref.shape[0], threat.eps
    cols = ["ref", *[f"adv eps={threat.label(e)}" for e in eps], "x0", "x1"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.7 * n), squeeze=False)
    for i in range(n):
        imgs = [ref[i], *[adv[k, i] for k in range(len(eps))], x0[i], x1[i]]
        for j, img in enumerate(imgs):
            ax = axes[i][j]
            ax.imshow(to_uint8_image(img if img.shape[0] == 3 else img[:3]))
            ax.set_xticks([])
            ax.set_yticks([])
            title = cols[j] if i == 0 else ""
            if info is not None:
                if j == 0:
                    p = f", p={float(info['p'][i]):.2g}" if "p" in info else ""
                    d = f"d0 {float(info['d0'][i]):.3f}, d1 {float(info['d1'][i]):.3f}"
                    title += f"\n#{int(info['index'][i])}{p}\n{d}"
                elif j <= len(eps):
                    k = j - 1
                    flipped = bool(info["flipped"][k, i])
                    title += (
                        f"\n|delta| {float(info['norm'][k, i]):.3f}"
                        f"\nd0 {float(info['adv_d0'][k, i]):.3f}, d1 {float(info['adv_d1'][k, i]):.3f}"
                        + ("\nFLIPPED" if flipped else "")
                    )
                    if flipped:
                        for spine in ax.spines.values():
                            spine.set_edgecolor("#D55E00")
                            spine.set_linewidth(3)
            if title:
                ax.set_title(title.strip("\n"), fontsize=7)
    fig.tight_layout(h_pad=1.2)
    return fig


LABEL_COLOURS = {1: "#009E73", 0: "#D55E00", -1: "#999999"}  # positive, negative, unannotated


@plain_text
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
