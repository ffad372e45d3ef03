"""Clean 2AFC evaluation of a Metric over a triplet dataset (streaming, with a progress bar)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustsim.certify.adaptive import adaptive_distances, is_adaptive
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv
from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric, validate_images
from robustsim.runner import run_batches
from robustsim.scoring import two_afc_per_triplet


@dataclass
class TwoAFCResult:
    """Per-triplet distances and scores; ``score`` is the dataset 2AFC score in [0, 1]."""

    metric: str
    data: str
    d0: torch.Tensor
    d1: torch.Tensor
    p: torch.Tensor
    groups: list[str] = field(default_factory=list)

    @property
    def per_triplet(self) -> torch.Tensor:
        return two_afc_per_triplet(self.d0, self.d1, self.p)

    @property
    def score(self) -> float:
        return float(self.per_triplet.mean())

    def group_scores(self) -> dict[str, float]:
        per = self.per_triplet
        out: dict[str, list[float]] = {}
        for g, s in zip(self.groups, per.tolist(), strict=True):
            out.setdefault(g, []).append(s)
        return {g: sum(v) / len(v) for g, v in sorted(out.items()) if g}


def triplet_distances(
    metric: Metric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(ref, x0), d(ref, x1)); embedding metrics embed each image once (3 passes, not 4); an adaptive metric's
    (:mod:`robustsim.certify.adaptive`) in float64, their comparison its exact decision."""
    if isinstance(metric, EmbeddingMetric) and ref.shape == x0.shape == x1.shape:
        if metric.validate:
            for name, t in (("ref", ref), ("x0", x0), ("x1", x1)):
                validate_images(t, name)
        if is_adaptive(metric):
            return adaptive_distances(metric, *(metric.as_input(t) for t in (ref, x0, x1)))
        e_ref, e0, e1 = metric._embed(metric.as_input(torch.cat([ref, x0, x1]))).split(ref.shape[0])
        return metric.embedding_distance(e_ref, e0), metric.embedding_distance(e_ref, e1)
    return metric(ref, x0), metric(ref, x1)


def check_finite_distances(name: str, *distances: torch.Tensor) -> None:
    """Refuse NaN / inf distances (broken weights or inputs) instead of scoring them as ties."""
    bad = sum(int((~torch.isfinite(d)).sum()) for d in distances)
    if bad:
        raise RobustsimError(
            f"metric {name!r} returned {bad} non-finite distance(s); its weights or inputs are broken, "
            "re-create or re-fetch its weights"
        )


@torch.no_grad()
def evaluate_2afc(
    metric: Metric,
    data: TripletDataset,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> TwoAFCResult | None:
    """Compute d(ref, x0), d(ref, x1) for every triplet and the 2AFC score. Under torchrun each rank scores
    every ``world``-th triplet and rank 0 gets the whole result (other ranks None)."""
    metric = metric.to(device).eval()

    def step(batch: dict, tick) -> dict[str, torch.Tensor]:
        d0, d1 = triplet_distances(metric, batch["ref"], batch["x0"], batch["x1"])
        wide = torch.promote_types(d0.dtype, torch.float32)  # an adaptive metric's float64 distances stay float64
        return {"d0": d0.to(wide), "d1": d1.to(wide), "p": batch["p"]}

    rows = run_batches(
        data,
        step,
        desc=f"{metric.name} on {data.name}",
        batch_size=batch_size,
        device=device,
        metric=metric,
        workers=workers,
        progress=progress,
        env=env,
    )
    if rows is None:
        return None
    check_finite_distances(metric.name, rows["d0"], rows["d1"])
    return TwoAFCResult(metric.name, data.name, rows["d0"], rows["d1"], rows["p"], data.groups())
