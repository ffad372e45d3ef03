"""The embedding attack: how far can a metric be pushed by an imperceptible change?

Maximises d(x, x + delta) over ||delta|| <= eps inside the [0, 1] box with APGD (the same machinery
as the 2AFC attacks). A 1-Lipschitz metric bounds the answer (``certify.embedding_distance_bound``); for a
center-smoothed output, :func:`smoothed_output_attack` attacks the smoothed output with EoT gradients and its
answer is bounded by ``CenterSmoothing.certify``.
"""

from __future__ import annotations

import torch

from robustsim.attacks.geometry import Norm
from robustsim.attacks.optim import apgd
from robustsim.certify.center import CenterSmoothing
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


def smoothed_output_attack(
    smooth: CenterSmoothing, x: torch.Tensor, eps: float, steps: int = 50, eot: int = 16, seed: int = 0, ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push the center-smoothed output of ``x`` as far as l2 ``eps`` allows: APGD on the mean over ``eot`` noise
    draws per step of the outputs' distance from x's centre (1 - cos for embeddings). Returns (x_adv, the
    distance d_out between the centres of x and x_adv, as :class:`CenterSmoothing` computes them)."""
    m = smooth.metric
    centers, _ = smooth.center(x, ids=ids)
    centers = centers.to(x.device)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    fixed = m.as_input(x)

    def objective(xa: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(xa.shape, generator=gen, device=xa.device, dtype=xa.dtype)
        noisy = m.as_input(xa + smooth.sigma * noise)
        c = centers[rows].to(noisy.dtype)
        if isinstance(m, EmbeddingMetric):
            d = m.embedding_distance(m._embed(noisy), c)
        else:
            d = (m.distance(noisy, fixed[rows]) - c[:, 0]).abs()
        return d, torch.zeros_like(d, dtype=torch.bool)

    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    x_adv, _ = apgd(objective, x, eps_t, "l2", steps=steps, generator=torch.Generator().manual_seed(seed), eot=eot)
    moved, _ = smooth.center(x_adv.detach(), ids=ids, clean=x)
    return x_adv.detach(), smooth.distance(moved, centers.to(moved.dtype))
