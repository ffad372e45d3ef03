"""Any Metric as a differentiable training loss, and weighted sums of metrics.

``PerceptualLoss("0.8*ms-ssim+0.2*l1")``, ``PerceptualLoss({"lpips-alex": 1.0, "l2": 0.1})`` or
``PerceptualLoss(metric)``: ``loss(x, y)`` is sum_i w_i * mean_b d_i(x_b, y_b) (``reduction="none"``
keeps the (B,) vector). A term without ``w*`` has weight 1; an unweighted ``a+b`` stays one
ensemble metric (``dinov2-s14+effnet-lite0``), so sums of metrics always carry weights. Images are
[0, 1] batches as everywhere in robustsim; gradients flow to both arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from robustsim.errors import InputError, RobustsimError
from robustsim.metrics.base import Metric
from robustsim.zoo import load_metric

_WEIGHTED = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*(.+?)\s*$")


def parse_terms(spec: str) -> list[tuple[float, str]]:
    """'0.8*ms-ssim+0.2*l1' -> [(0.8, 'ms-ssim'), (0.2, 'l1')]; 'a+b' -> [(1.0, 'a+b')]."""
    terms: list[tuple[float, str]] = []
    for piece in spec.split("+"):
        m = _WEIGHTED.match(piece)
        if m:
            terms.append((float(m.group(1)), m.group(2)))
        elif piece.strip() and terms:
            w, name = terms[-1]
            terms[-1] = (w, f"{name}+{piece.strip()}")
        elif piece.strip():
            terms.append((1.0, piece.strip()))
        else:
            raise RobustsimError(f"loss spec {spec!r} has an empty term; write e.g. 0.8*ms-ssim+0.2*l1")
    return terms


class PerceptualLoss(nn.Module):
    """Weighted sum of metric distances, usable as a training loss (the metrics' own weights are frozen)."""

    def __init__(
        self,
        terms: str | Mapping[str, float] | Metric,
        reduction: Literal["mean", "sum", "none"] = "mean",
        device: str | torch.device | None = None,
        **options,
    ) -> None:
        super().__init__()
        if not isinstance(terms, (str, Mapping, Metric)):
            raise InputError(
                f"PerceptualLoss takes a Metric, a zoo name or terms like '0.8*ms-ssim+0.2*l1', got {terms!r}"
            )
        if isinstance(terms, Metric):
            pairs: list[tuple[float, Metric]] = [(1.0, terms)]
        else:
            named = parse_terms(terms) if isinstance(terms, str) else [(float(w), n) for n, w in terms.items()]
            if not named:
                raise RobustsimError("a loss needs at least one metric; e.g. PerceptualLoss('ms-ssim')")
            pairs = [(w, load_metric(n, device=device, **options)) for w, n in named]
        if reduction not in ("mean", "sum", "none"):
            raise RobustsimError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.weights = [w for w, _ in pairs]
        self.metrics = nn.ModuleList([m.eval().requires_grad_(False) for _, m in pairs])
        self.reduction = reduction

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The metrics stay in eval mode (frozen batch norms) whatever the surrounding model does."""
        super().train(mode)
        self.metrics.eval()
        return self

    def terms(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Each metric's (B,) distances, unweighted."""
        return [m(x, y) for m in self.metrics]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = sum(w * d for w, d in zip(self.weights, self.terms(x, y), strict=True))
        assert isinstance(per, torch.Tensor)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{m.name}" for w, m in zip(self.weights, self.metrics, strict=True))
