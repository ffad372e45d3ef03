"""Certified l2 radii for the 2AFC decision of a Lipschitz embedding metric (science.md section 3).

Threat model: only the reference x moves, x0 and x1 are fixed. With f L-Lipschitz and
u = phi(x1) - phi(x0) (phi = f / ||f||), the metric picks x1 iff <f(x), u> > 0, and
<f(x + delta), u> moves by at most L ||delta|| ||u||. Hence the **sound** radius

    R = |<f(x), u>| / (L ||u||) = ||f(x)|| |d1 - d0| / (L ||phi(x0) - phi(x1)||),

which needs no assumption on ||f||. ``mode="lipsim"`` gives the published formula
R = |d1 - d0| / ||phi(x0) - phi(x1)||; it equals the sound one only when ||f(x)|| = 1 and L = 1 and
over-claims when ||f(x)|| < 1. Exact ties get radius 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric

Mode = Literal["sound", "lipsim"]


def require_lipschitz(metric: Metric) -> float:
    """The metric's guaranteed Lipschitz constant; refuse metrics without one."""
    L = getattr(metric, "lipschitz", None)
    if not isinstance(metric, EmbeddingMetric) or L is None:
        raise RobustsimError(
            f"metric {metric.name!r} has no Lipschitz guarantee, so no certificate exists; "
            f"measure its empirical robustness with `robustsim audit --metric {metric.name}`"
        )
    if not L > 0:
        raise RobustsimError(f"metric {metric.name!r} declares Lipschitz constant {L}; it must be > 0")
    return float(L)


def radius_from_embeddings(
    e_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor, lipschitz: float, mode: Mode = "sound"
) -> torch.Tensor:
    """Per-triplet certified radius from raw embeddings (B, D) of ref, x0, x1."""
    if mode not in ("sound", "lipsim"):
        raise ValueError(f"mode must be 'sound' or 'lipsim', got {mode!r}")
    u = F.normalize(e1, dim=1, eps=1e-12) - F.normalize(e0, dim=1, eps=1e-12)
    u_norm = u.norm(dim=1)
    margin = (e_ref * u).sum(1).abs()  # |<f(x), u>|
    if mode == "lipsim":
        margin = margin / e_ref.norm(dim=1).clamp_min(1e-12)  # |<phi(x), u>| = |d1 - d0|
        lipschitz = 1.0
    r = margin / (lipschitz * u_norm.clamp_min(1e-12))
    return torch.where((u_norm == 0) | (margin == 0), torch.zeros_like(r), r)


def certified_radius(
    metric: Metric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, mode: Mode = "sound"
) -> torch.Tensor:
    """(B,) l2 radius around ``ref`` within which the metric's 2AFC choice cannot change."""
    L = require_lipschitz(metric)
    assert isinstance(metric, EmbeddingMetric)
    with torch.no_grad():
        e = metric.embed(torch.cat([ref, x0, x1]))
    e_ref, e0, e1 = e.split(ref.shape[0])
    return radius_from_embeddings(e_ref, e0, e1, L, mode)


def embedding_distance_bound(metric: Metric, x: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) upper bound on d(x, x + delta) over ||delta||_2 <= eps (at the metric's input size).

    ||phi(a) - phi(b)|| <= ||a - b|| / min(||a||, ||b||), so with ||f(x + delta) - f(x)|| <= L eps:
    ||phi(x + delta) - phi(x)|| <= L eps / (||f(x)|| - L eps) and d = ||.||^2 / 2, capped at 2
    (the largest possible 1 - cos).
    """
    L = require_lipschitz(metric)
    with torch.no_grad():
        norm = metric.embed(x).norm(dim=1)
    slack = norm - L * eps
    chord = torch.where(slack > 0, L * eps / slack.clamp_min(1e-12), torch.full_like(norm, 2.0))
    return (chord.clamp(max=2.0) ** 2 / 2).clamp(max=2.0)
