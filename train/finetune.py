"""2AFC fine-tuning (LipSim stage 2) of a 1-Lipschitz embedding: hinge on the 2AFC logit, or on the
certified radius itself.

- ``hinge`` (LipSim's): with l = d(x, x0) - d(x, x1) and y = 1 when humans prefer x1, the loss is
  mean max(0, margin - l (2y - 1)); triplets with p = 0.5 carry no label and contribute 0.
- ``certified`` (Lipschitz-margin training, Tsuzuku et al. 2018): the hinge plus
  ``weight * mean max(0, eps - R_signed) / eps``, where R_signed is the sound radius the certifier reports
  (:func:`robustsim.certify.radius_from_embeddings`, with the metric's Lipschitz constant for the training
  size), positive when the decision agrees with the label, negative otherwise: the objective is what is
  certified, so it also rewards a large ||f(x)||, to which the hinge is blind.

Selection on a validation split by clean 2AFC score or by certified accuracy at one epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.certify import certify_2afc, radius_from_embeddings
from robustsim.data.triplets import TripletDataset
from robustsim.dist import local_env
from robustsim.models.lipsim import LipSimMetric
from robustsim.threat import format_eps


def hinge_2afc(e_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor, p: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge loss over the batch (unlabelled p = 0.5 rows count as 0)."""
    d0 = 1 - F.cosine_similarity(e_ref, e0, dim=1, eps=1e-12)
    d1 = 1 - F.cosine_similarity(e_ref, e1, dim=1, eps=1e-12)
    sign = torch.where(p > 0.5, 1.0, -1.0).to(d0)
    labelled = (p != 0.5).to(d0)
    return (F.relu(margin - (d0 - d1) * sign) * labelled).mean()


def signed_radius(e_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor, p: torch.Tensor, lipschitz: float):
    """(B,) the certifier's sound radius (reference moving), signed: + when the decision matches the label."""
    r = radius_from_embeddings(e_ref, e0, e1, lipschitz)
    picks_x1 = (e_ref.double() * (F.normalize(e1.double(), dim=1) - F.normalize(e0.double(), dim=1))).sum(1) > 0
    return torch.where(picks_x1 == (p > 0.5), r, -r)


def certified_loss(
    e_ref: torch.Tensor,
    e0: torch.Tensor,
    e1: torch.Tensor,
    p: torch.Tensor,
    margin: float,
    lipschitz: float,
    target_eps: float,
    weight: float = 1.0,
) -> torch.Tensor:
    """The hinge plus ``weight`` x the mean shortfall of the signed radius below ``target_eps`` (relative)."""
    labelled = (p != 0.5).to(torch.float64)
    shortfall = F.relu(target_eps - signed_radius(e_ref, e0, e1, p, lipschitz)) / target_eps
    radius_term = (shortfall * labelled).mean().to(e_ref.dtype)
    return hinge_2afc(e_ref, e0, e1, p, margin) + weight * radius_term


LOSSES = ("hinge", "certified")
SELECTIONS = ("certified", "clean")  # what picks the best/ checkpoint


def validation_figures(
    metric: LipSimMetric, data: TripletDataset, eps: list[float], refine: bool = True
) -> dict[str, float]:
    """Clean 2AFC score and certified accuracy at each epsilon (l2) on ``data``; ``refine=False`` (the per-epoch
    checks): sound radii from the float32 pass alone, no float64 refinement (:func:`certify_2afc`)."""
    env = local_env(metric.device)  # rank 0 validates alone: no sharding across the training job's ranks
    res = certify_2afc(metric, data, eps, batch_size=128, device=metric.device, progress=False, env=env, refine=refine)
    return {"clean": res.clean_score, **{certified_key(e): res.certified_at(e) for e in eps}}


def certified_key(eps: float) -> str:
    """The figure name of certified accuracy at an l2 ``eps`` in logs, summaries and checkpoints
    (``certified@36/255``: the radius as every report writes it)."""
    return f"certified@{format_eps(eps)}"


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
    objective: Literal["hinge", "certified"] = "hinge"
    target_eps: float = 36 / 255
    radius_weight: float = 1.0
    lipschitz: float = 1.0  # the metric's constant at the training size (radius of the certified loss)

    def loss(self, model: nn.Module, batch: Any, gen: torch.Generator, rows: slice, total: int) -> torch.Tensor:
        device = next(model.parameters()).device
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        e_ref, e0, e1 = model(torch.cat([ref, x0, x1])).split(ref.shape[0])
        p = batch["p"].to(device)
        if self.objective == "certified":
            return certified_loss(e_ref, e0, e1, p, self.margin, self.lipschitz, self.target_eps, self.radius_weight)
        return hinge_2afc(e_ref, e0, e1, p, self.margin)

    def evaluate(self, metric: LipSimMetric) -> tuple[dict[str, float], float]:
        figures = validation_figures(metric, self.val, [self.select_eps], refine=False)
        key = "clean" if self.select == "clean" else certified_key(self.select_eps)
        return figures, figures[key]
