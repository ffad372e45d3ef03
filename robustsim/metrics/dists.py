"""DISTS (Ding et al. 2020) through ``piq`` (its ``DISTS``: VGG16 structure and texture similarity with the
published alpha / beta weights), the VGG16 and DISTS weight files resolved through robustsim's weights
manager. Inputs are [0, 1] images, as piq takes them."""

from __future__ import annotations

import torch

from robustsim.compat import import_optional
from robustsim.metrics.base import Metric


class DISTSMetric(Metric):
    """d = DISTS(x, y) per pair (piq, reduction none)."""

    name = "dists"

    def __init__(self, validate: bool = True) -> None:
        super().__init__(validate=validate)
        piq = import_optional("piq")
        from robustsim.weights.hub import managed_downloads

        with managed_downloads():
            self.model = piq.DISTS(reduction="none")
        self.eval().requires_grad_(False)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y).flatten()
