"""2AFC fine-tuning (LipSim stage 2): hinge loss on the 2AFC logit of a 1-Lipschitz embedding.

With l = d(x, x0) - d(x, x1) and y = 1 when humans prefer x1, the loss is mean max(0, margin - l (2y - 1));
triplets with p = 0.5 carry no label and contribute 0. Selection on a validation split by clean 2AFC
score or by certified accuracy at one epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from robustsim.certify import certify_2afc
from torch import nn

from robustsim.data.triplets import TripletDataset
from robustsim.models.lipsim import LipSimMetric


def hinge_2afc(e_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor, p: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge loss over the batch (unlabelled p = 0.5 rows count as 0)."""
    d0 = 1 - F.cosine_similarity(e_ref, e0, dim=1, eps=1e-12)
    d1 = 1 - F.cosine_similarity(e_ref, e1, dim=1, eps=1e-12)
    sign = torch.where(p > 0.5, 1.0, -1.0).to(d0)
    labelled = (p != 0.5).to(d0)
    return (F.relu(margin - (d0 - d1) * sign) * labelled).mean()


def validation_figures(metric: LipSimMetric, data: TripletDataset, eps: list[float]) -> dict[str, float]:
    """Clean 2AFC score and certified accuracy at each epsilon (l2) on ``data``."""
    res = certify_2afc(metric, data, eps=eps, batch_size=128, device=metric.device, progress=False)
    return {"clean": res.clean_score, **{f"certified@{e:.4g}": res.certified_at(e) for e in eps}}


@dataclass
class FinetuneTask:
    """The fine-tuning recipe as a :class:`~robustsim.train.loop.Task`."""

    dataset: TripletDataset
    val: TripletDataset
    margin: float
    select: Literal["clean", "certified"]
    select_eps: float
    meta: dict[str, Any]
    name: str = "finetune"
    select_from_init: bool = True

    def loss(self, model: nn.Module, batch: Any, gen: torch.Generator, rows: slice, total: int) -> torch.Tensor:
        device = next(model.parameters()).device
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        e_ref, e0, e1 = model(torch.cat([ref, x0, x1])).split(ref.shape[0])
        return hinge_2afc(e_ref, e0, e1, batch["p"].to(device), self.margin)

    def evaluate(self, metric: LipSimMetric) -> tuple[dict[str, float], float]:
        figures = validation_figures(metric, self.val, [self.select_eps])
        key = "clean" if self.select == "clean" else f"certified@{self.select_eps:.4g}"
        return figures, figures[key]
