"""The embedding attack: how far can a metric be pushed by an imperceptible change?

Maximises d(x, x + delta) over ||delta|| <= eps inside the [0, 1] box with APGD (the same machinery
as the 2AFC attacks). A 1-Lipschitz metric bounds the answer (``certify.embedding_distance_bound``).
"""

from __future__ import annotations

import torch
from robustsim.attacks.geometry import Norm
from robustsim.attacks.pgd import apgd

from robustsim.metrics.base import EmbeddingMetric, Metric


def embedding_attack(
    metric: Metric, x: torch.Tensor, eps: float, norm: Norm = "l2", steps: int = 100, restarts: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_adv, d(x, x_adv)) with x_adv in the eps ball around ``x`` and in [0, 1]."""
    metric = metric.eval()
    with torch.no_grad():
        e_x = metric._embed(x) if isinstance(metric, EmbeddingMetric) else None

    def objective(xa: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if e_x is not None:
            d = metric.embedding_distance(e_x[rows], metric._embed(xa))
        else:
            d = metric.distance(x[rows], xa)
        return d, torch.zeros_like(d, dtype=torch.bool)

    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    gen = torch.Generator().manual_seed(seed)
    x_adv, _ = apgd(objective, x, eps_t, norm, steps=steps, restarts=restarts, generator=gen)
    with torch.no_grad():
        return x_adv, metric.distance(x, x_adv)
