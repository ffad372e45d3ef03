"""Certified 2AFC accuracy over a dataset and a list of epsilons (streaming, one pass)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from robustsim.certify.radius import Mode, radius_from_embeddings, require_lipschitz
from tqdm.auto import tqdm

from robustsim.data.triplets import TripletDataset, iter_batches, triplet_loader
from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.scoring import two_afc_per_triplet
from robustsim.threads import runtime_info


@dataclass
class CertifyResult:
    """Per-triplet radius, clean 2AFC score and label; certified scores per epsilon.

    Certified 2AFC at eps = mean over triplets of the clean score if R > eps, else the worst the
    attacker can force, min(p, 1 - p) (0 for unanimous labels). It lower-bounds the robust score.
    """

    metric: str
    data: str
    mode: str
    lipschitz: float
    radius: torch.Tensor
    clean: torch.Tensor
    p: torch.Tensor
    eps: list[float] = field(default_factory=list)

    def certified_at(self, eps: float) -> float:
        worst = torch.minimum(self.p, 1 - self.p).to(self.clean.dtype)
        return float(torch.where(self.radius > eps, self.clean, worst).mean())

    @property
    def clean_score(self) -> float:
        return float(self.clean.mean())

    def curve(self) -> list[dict]:
        return [{"eps": e, "certified": self.certified_at(e), "clean": self.clean_score} for e in self.eps]

    def to_json(self) -> dict:
        return {
            "version": 1,
            "kind": "certify",
            "metric": self.metric,
            "data": self.data,
            "mode": self.mode,
            "lipschitz": self.lipschitz,
            "norm": "l2",
            "runtime": runtime_info(),
            "clean": self.clean_score,
            "curve": self.curve(),
            "triplets": [
                {"radius": r, "clean": c, "p": p}
                for r, c, p in zip(self.radius.tolist(), self.clean.tolist(), self.p.tolist(), strict=True)
            ],
        }


@torch.no_grad()
def certify_2afc(
    metric: Metric,
    data: TripletDataset,
    eps: Sequence[float],
    mode: Mode = "sound",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
) -> CertifyResult:
    """Certify every triplet of ``data`` (loaded at the metric's input size, so the radius is in
    the pixel space the network sees). One embedding pass per image; no attack needed."""
    L = require_lipschitz(metric)
    assert isinstance(metric, EmbeddingMetric)
    metric = metric.to(device).eval()
    radii, cleans, ps = [], [], []
    loader = triplet_loader(data, batch_size=batch_size, workers=workers)
    for batch in tqdm(
        iter_batches(loader), total=len(loader), desc=f"certify {metric.name}", disable=not progress, leave=False
    ):
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        e_ref, e0, e1 = metric.embed(torch.cat([ref, x0, x1])).split(ref.shape[0])
        radii.append(radius_from_embeddings(e_ref, e0, e1, L, mode).cpu())
        d0, d1 = metric.embedding_distance(e_ref, e0), metric.embedding_distance(e_ref, e1)
        cleans.append(two_afc_per_triplet(d0.cpu(), d1.cpu(), batch["p"]))
        ps.append(batch["p"].to(torch.float64))
    return CertifyResult(
        metric.name,
        getattr(data, "name", "data"),
        mode,
        L,
        torch.cat(radii).double(),
        torch.cat(cleans),
        torch.cat(ps),
        list(eps),
    )
