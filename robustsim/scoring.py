"""The 2AFC score (docs/metrics.md), the one function every module uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def two_afc_choice(d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """Per triplet: 1.0 if the metric picks x1 (d1 < d0), 0.0 if it picks x0, 0.5 on an exact tie."""
    return torch.where(d1 < d0, 1.0, torch.where(d1 > d0, 0.0, 0.5)).to(torch.float64)


def two_afc_per_triplet(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score: p if the metric picks x1, 1 - p if it picks x0, 0.5 on a tie.

    ``p`` is the fraction of humans who found x1 closer to the reference.
    """
    return choice_score(two_afc_choice(d0, d1), p)


def choice_score(choice: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score of a choice (1.0 = x1, 0.0 = x0, 0.5 = tie): p, 1 - p or 1/2."""
    c = choice.to(torch.float64)
    p = p.to(torch.float64).to(c.device)
    return c * p + (1 - c) * (1 - p)


def two_afc_score(
    d0: torch.Tensor | Sequence[float], d1: torch.Tensor | Sequence[float], p: torch.Tensor | Sequence[float]
) -> float:
    """Mean 2AFC score in [0, 1] over triplets (d0 = d(ref, x0), d1 = d(ref, x1), p = the fraction of people who
    found x1 closer, in [0, 1]); tensors or lists of numbers. A fraction, as every Python API result is (the CLI
    prints %)."""
    from robustsim.checks import numbers_arg, probability_arg

    d0, d1, p = numbers_arg(d0, "d0"), numbers_arg(d1, "d1"), probability_arg(p, "p")
    if d0.shape != d1.shape or d0.shape != p.shape:
        raise ValueError(f"d0, d1 and p need equal shapes, got {tuple(d0.shape)}, {tuple(d1.shape)}, {tuple(p.shape)}")
    if d0.numel() == 0:
        raise ValueError("no triplets to score")
    return float(two_afc_per_triplet(d0, d1, p).mean())
