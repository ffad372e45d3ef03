"""Certified 2AFC accuracy over a dataset and a list of epsilons (streaming, one pass), for a threat
model (which image moves) and a method: ``lipschitz`` (a proof, :mod:`robustsim.certify.radius`) or
``smoothing`` (a certificate for the smoothed metric, :mod:`robustsim.certify.smoothing`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from robustsim.certify.lipschitz import input_lipschitz, network_lipschitz
from robustsim.certify.radius import Mode, Target, radius_from_embeddings
from robustsim.certify.rounding import embed_with_error
from tqdm.auto import tqdm

from robustsim.data.triplets import TripletDataset, iter_batches, triplet_loader
from robustsim.dist import DistEnv, gather_objects, gather_rows, init_distributed, shard
from robustsim.metrics.base import EmbeddingMetric, Metric, validate_images
from robustsim.scoring import choice_score, two_afc_choice
from robustsim.threads import runtime_info

ROUNDING_NOTE = (
    "radii hold for the network in exact arithmetic: embeddings are computed in float64 and the stated "
    "rounding bound (robustsim.certify.rounding) is subtracted"
)


@dataclass
class CertifyResult:
    """Per-triplet radius, clean 2AFC score and label; certified scores per epsilon.

    Certified 2AFC at eps = mean over triplets of the clean score if R > eps, else the worst the
    attacker can force, min(p, 1 - p) (0 for unanimous labels). It lower-bounds the robust score.
    For smoothing, ``clean`` is the smoothed metric's score (an abstention scores min(p, 1 - p)).
    """

    metric: str
    data: str
    mode: str
    lipschitz: float
    radius: torch.Tensor
    clean: torch.Tensor
    p: torch.Tensor
    eps: list[float] = field(default_factory=list)
    target: str = "ref"
    method: str = "lipschitz"
    details: dict = field(default_factory=dict)

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
            "version": 2,
            "kind": "certify",
            "metric": self.metric,
            "data": self.data,
            "method": self.method,
            "mode": self.mode,
            "threat_model": {"norm": "l2", "target": self.target, "eps": self.eps},
            "target": self.target,
            "lipschitz": self.lipschitz,
            "norm": "l2",
            **self.details,
            "runtime": runtime_info(),
            "clean": self.clean_score,
            "curve": self.curve(),
            "triplets": [
                {"radius": r, "clean": c, "p": p}
                for r, c, p in zip(self.radius.tolist(), self.clean.tolist(), self.p.tolist(), strict=True)
            ],
        }


@torch.no_grad()
def lipschitz_batch(
    metric: EmbeddingMetric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, target: Target, mode: Mode
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(radius, choice, L) for one batch: the certified radius of the exact-arithmetic decision, zeroed
    where the metric's own (float32) choice differs from it; the metric's choice (1 = x1, 0 = x0, 0.5 tie)."""
    n = ref.shape[0]
    L, _ = input_lipschitz(metric, tuple(ref.shape[-2:]))
    imgs = torch.cat([ref, x0, x1])
    e32 = metric._embed(metric.as_input(imgs)).split(n)
    choice = two_afc_choice(metric.embedding_distance(e32[0], e32[1]), metric.embedding_distance(e32[0], e32[2]))
    e, delta = embed_with_error(metric, imgs)
    (a, f0, f1), (da, d0, d1) = e.split(n), delta.split(n)
    radius = radius_from_embeddings(a, f0, f1, L, mode, target, (da, d0, d1))
    exact_choice = two_afc_choice(1 - torch.cosine_similarity(a, f0), 1 - torch.cosine_similarity(a, f1))
    return torch.where(exact_choice == choice, radius, torch.zeros_like(radius)), choice, torch.tensor(L)


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
    target: Target = "ref",
    env: DistEnv | None = None,
) -> CertifyResult | None:
    """Certify every triplet of ``data`` in the caller's pixels (images as loaded; the metric's resize and
    normalisation are part of the constant) against ``target`` moving. One float32 and one float64
    embedding pass per image; no attack needed. Under torchrun ranks share the triplets and rank 0 gets the
    whole result (other ranks None)."""
    metric = metric.to(device).eval()
    _, source = network_lipschitz(metric)  # refuses metrics without a bound before any work
    assert isinstance(metric, EmbeddingMetric)
    env = env or init_distributed(torch.device(device))
    full, (data, mine) = data, shard(data, env)
    radii, cleans, ps, constants = [], [], [], set()
    loader = triplet_loader(data, batch_size=batch_size, workers=workers)
    for batch in tqdm(
        iter_batches(loader),
        total=len(loader),
        desc=f"certify {metric.name}",
        disable=not (progress and env.main),
        leave=False,
    ):
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        if metric.validate:
            for name, t in (("ref", ref), ("x0", x0), ("x1", x1)):
                validate_images(t, name)
        radius, choice, L = lipschitz_batch(metric, ref, x0, x1, target, mode)
        constants.add(round(float(L), 12))
        radii.append(radius.cpu())
        p = batch["p"].to(torch.float64)
        cleans.append(choice_score(choice.cpu(), p))
        ps.append(p)
    radius, clean, p = torch.cat(radii).double(), torch.cat(cleans), torch.cat(ps)
    if env.world > 1:
        radius, clean, p = (gather_rows(t, mine, len(full), env) for t in (radius, clean, p))
        gathered = gather_objects(sorted(constants), env)
        if not env.main:
            return None
        constants = {c for part in gathered or [] for c in part}
    return CertifyResult(
        metric.name,
        getattr(full, "name", "data"),
        mode,
        max(constants) if constants else 0.0,
        radius,
        clean,
        p,
        list(eps),
        target,
        "lipschitz",
        {"lipschitz_source": source, "rounding": ROUNDING_NOTE},
    )


@torch.no_grad()
def certify_smoothed(
    metric: Metric,
    data: TripletDataset,
    eps: Sequence[float],
    sigma: float,
    n: int = 512,
    n0: int = 0,
    alpha: float = 0.001,
    batch_size: int = 8,
    noise_batch: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
) -> CertifyResult:
    """Randomized-smoothing certificates (:class:`robustsim.certify.smoothing.SmoothedMetric`) for every
    triplet: the reference moves, l2. ``clean`` holds the smoothed metric's 2AFC score (an abstention
    scores min(p, 1 - p)); radii are -1 on abstention. Sound for each triplet with probability
    >= 1 - alpha over the noise."""
    from robustsim.certify.smoothing import ABSTAIN, SmoothedMetric

    metric = metric.to(device).eval()
    smooth = SmoothedMetric(metric, sigma, n=n, n0=n0, alpha=alpha, batch=noise_batch, seed=seed)
    radii, cleans, ps = [], [], []
    loader = triplet_loader(data, batch_size=batch_size, workers=workers)
    bar = tqdm(total=len(data), desc=f"smoothing {metric.name}", disable=not progress, leave=False, unit="triplet")
    for batch in iter_batches(loader):
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        if metric.validate:
            for name, t in (("ref", ref), ("x0", x0), ("x1", x1)):
                validate_images(t, name)
        p = batch["p"].to(torch.float64)
        decision, radius = smooth.certify(ref, x0, x1)
        score = choice_score(decision.clamp(min=0).double(), p)
        cleans.append(torch.where(decision == ABSTAIN, torch.minimum(p, 1 - p), score))
        radii.append(radius)
        ps.append(p)
        bar.update(ref.shape[0])
    bar.close()
    radius = torch.cat(radii)
    return CertifyResult(
        metric.name,
        getattr(data, "name", "data"),
        "smoothing",
        0.0,
        radius,
        torch.cat(cleans),
        torch.cat(ps),
        list(eps),
        "ref",
        "smoothing",
        {
            "smoothing": {"sigma": sigma, "n": n, "n0": n0, "alpha": alpha, "seed": seed},
            "abstain_rate": float((radius < 0).double().mean()),
            "certificate": f"for the smoothed metric (Gaussian noise sigma={sigma} on the reference), each "
            f"radius sound with probability >= {1 - alpha} over the noise; not a certificate of the base metric",
        },
    )
