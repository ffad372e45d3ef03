"""Certified 2AFC accuracy over a dataset and a threat model (which image moves, which norm, which radii),
streaming in one pass, by a method: ``lipschitz`` (a proof, :mod:`robustsim.certify.radius`) or
``smoothing`` (a certificate for the smoothed metric, :mod:`robustsim.metrics.smoothed`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from robustsim.certify.adaptive import adaptive_batch, decisions, describe
from robustsim.certify.lipschitz import input_lipschitz, network_lipschitz
from robustsim.certify.radius import RADIUS_TOL, Mode, lipschitz_batch
from robustsim.certify.rounding import float64_copy, is_adaptive, unit_roundoff
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, gather_objects, init_distributed
from robustsim.metrics.base import EmbeddingMetric, Metric, evaluating
from robustsim.runner import run_batches
from robustsim.scoring import choice_score
from robustsim.settings import SmoothingSettings
from robustsim.table import format_table, pct, percent
from robustsim.text import md_code
from robustsim.threads import runtime_info
from robustsim.threat import ThreatModel

ROUNDING_NOTE = (
    "radii hold for the decision the metric computes in its own dtype (unit roundoff {unit:.3g}): the rounding of "
    "its forward pass and of the cosine distance is bounded (robustsim.certify.rounding) and certified against"
)


@dataclass
class CertifyResult:
    """Per-triplet l2 radius, clean 2AFC score and label under one threat model.

    Certified 2AFC at eps = mean over triplets of the clean score if the radius exceeds eps (for a linf threat
    model, sqrt(d) eps: the l2 ball holding the linf ball), else the worst the attacker can force,
    min(p, 1 - p) (0 for unanimous labels). It lower-bounds the robust score. For smoothing, ``clean`` is the
    smoothed metric's score (an abstention scores min(p, 1 - p)) and an abstention has radius -1.
    """

    metric: str
    data: str
    threat: ThreatModel
    radius: torch.Tensor
    clean: torch.Tensor
    p: torch.Tensor
    dim: int
    method: str = "lipschitz"
    mode: str = "sound"
    lipschitz: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def eps(self) -> list[float]:
        return list(self.threat.eps)

    @property
    def target(self) -> str:
        return self.threat.target

    def certified_at(self, eps: float) -> float:
        worst = torch.minimum(self.p, 1 - self.p).to(self.clean.dtype)
        return float(torch.where(self.radius > self.threat.l2_radius(eps, self.dim), self.clean, worst).mean())

    def certified_per_triplet(self) -> torch.Tensor:
        """(n_eps, N) bool: the clean decision is right (score 1) and certified at each radius."""
        right = self.clean == 1.0
        return torch.stack([right & (self.radius > self.threat.l2_radius(e, self.dim)) for e in self.eps])

    @property
    def clean_score(self) -> float:
        return float(self.clean.mean())

    def curve(self) -> list[dict]:
        return [{"eps": e, "certified": self.certified_at(e), "clean": self.clean_score} for e in self.eps]

    def rows(self) -> list[dict]:
        """One row per radius, accuracies in % (as the CLI prints them; the attributes and
        :meth:`certified_at` are fractions): ``eps`` (its label), ``clean``, ``certified``."""
        return [
            {
                "eps": self.threat.label(e),
                "clean": percent(self.clean_score),
                "certified": percent(self.certified_at(e)),
            }
            for e in self.eps
        ]

    def __repr__(self) -> str:
        cert = " / ".join(f"{r['certified']:.1f}" for r in self.rows())
        at = ", ".join(self.threat.labels())
        return (
            f"CertifyResult({self.metric} on {self.data}, n={len(self.p)}, {self.threat.norm} {self.target}, "
            f"{self.method}: clean {100 * self.clean_score:.1f} %, certified {cert} % at {at}; .rows() in %, "
            ".certified_at(eps) a fraction)"
        )

    def describe(self) -> str:
        """One line: the method, its constant or smoothing settings, and n."""
        if self.method == "lipschitz":
            source = self.details.get("lipschitz_source")
            how = f"method=lipschitz ({source} bound), mode={self.mode}, L={self.lipschitz:g}"
            if self.details.get("dtype") == "adaptive":
                how += f", {describe(self.details.get('decisions', {'procedure': 'adaptive'}))}, radii of the "
                how += "float64 deployment"
            else:
                how += f", deployed in {self.details.get('dtype', 'float32')}"
            if self.details.get("rounding_assumed"):
                how += f" (rounding of {', '.join(self.details['rounding_assumed'])} bounded by the generic rule)"
        else:
            sm = self.details.get("smoothing", {})
            how = (
                f"method=smoothing (a certificate of the SMOOTHED metric, sigma={sm.get('sigma', 0):g}, "
                f"n={sm.get('n')}, alpha={sm.get('alpha', 0):g}, abstained on "
                f"{100 * self.details.get('abstain_rate', 0):.1f}%)"
            )
        return f"{self.threat.describe()}; {how}; n={len(self.p)}"

    def table(self, markdown: bool = False) -> str:
        """Rows: epsilon; columns: clean (smoothed) and certified 2AFC (%); the median certified radius."""
        clean = "clean" if self.method == "lipschitz" else "smoothed"
        rows = [(self.threat.label(e), pct(self.clean_score), pct(self.certified_at(e))) for e in self.eps]
        text = format_table([f"eps ({self.threat.norm}, {self.target})", clean, "certified"], rows, markdown=markdown)
        certified = self.radius[self.radius >= 0]
        if certified.numel():
            text += ("\n\n" if markdown else "\n") + f"median certified radius (l2): {float(certified.median()):.4f}"
        return text

    def markdown(self) -> str:
        title = f"# Certified 2AFC of {md_code(self.metric)} on {md_code(self.data)}"
        return f"{title}\n\n{self.describe()}\n\n{self.table(True)}\n"

    def figure(self):
        """Certified (and clean) 2AFC accuracy against epsilon."""
        from robustsim.plots import Curve, accuracy_figure

        clean = "clean" if self.method == "lipschitz" else "smoothed"
        curves = [
            Curve(clean, self.eps, [self.clean_score] * len(self.eps), "--"),
            Curve(f"certified ({self.method}, {self.target})", self.eps, [self.certified_at(e) for e in self.eps]),
        ]
        return accuracy_figure(curves, self.threat.norm, f"{self.metric} on {self.data}")

    def figures(self) -> dict:
        return {"certified.png": self.figure()}

    def to_json(self) -> dict:
        return {
            "version": 3,
            "kind": "certify",
            "metric": self.metric,
            "data": self.data,
            "method": self.method,
            "mode": self.mode,
            "threat_model": self.threat.to_json(),
            "norm": self.threat.norm,
            "target": self.threat.target,
            "eps": self.eps,
            "lipschitz": self.lipschitz,
            **self.details,
            "runtime": runtime_info(),
            "clean": self.clean_score,
            "curve": self.curve(),
            "triplets": [
                {"radius": r, "clean": c, "p": p}
                for r, c, p in zip(self.radius.tolist(), self.clean.tolist(), self.p.tolist(), strict=True)
            ],
        }


def _dim(data: TripletDataset) -> int:
    return int(data[0]["ref"].numel()) if len(data) else 0


class _LipschitzRun:
    """The batches of one Lipschitz certification: the constant once per caller image size, the float64 twin made
    only if a triplet needs it, and the constants and generically bounded modules every batch used."""

    def __init__(self, metric: EmbeddingMetric, threat: ThreatModel, mode: Mode, refine: bool) -> None:
        self.metric, self.threat, self.mode = metric, threat, mode
        self.constants: set[float] = set()
        self.generic: set[str] = set()  # modules whose rounding only the generic rule bounds
        self.by_size: dict[tuple[int, int], float] = {}
        self.twin: list[EmbeddingMetric] = []
        self.refine_with = self.exact if refine and metric.dtype != torch.float64 else None  # float64: exact

    def exact(self) -> EmbeddingMetric:
        if not self.twin:
            self.twin.append(float64_copy(self.metric))
        return self.twin[0]

    def step(self, batch: dict, tick) -> dict[str, torch.Tensor]:
        hw = (int(batch["ref"].shape[-2]), int(batch["ref"].shape[-1]))
        if hw not in self.by_size:
            self.by_size[hw] = input_lipschitz(self.metric, hw)[0]
        if self.mode == "sound" and is_adaptive(self.metric):
            dim = int(batch["ref"][0].numel())
            thresholds = [self.threat.l2_radius(e, dim) for e in self.threat.eps]
            L = self.by_size[hw]
            radius, choice, assumed = adaptive_batch(self.metric, batch["ref"], batch["x0"], batch["x1"],
                                                     self.threat.target, L, thresholds)  # fmt: skip
        else:
            radius, choice, L, assumed = lipschitz_batch(self.metric, batch["ref"], batch["x0"], batch["x1"],
                                                         self.threat.target, self.mode, self.by_size[hw],
                                                         exact=self.refine_with)  # fmt: skip
        self.constants.add(round(float(L), 12))
        self.generic.update(assumed)
        p = batch["p"].to(torch.float64)
        return {"radius": radius.double(), "clean": choice_score(choice.cpu(), p), "p": p}


@torch.no_grad()
def certify_2afc(
    metric: Metric,
    data: TripletDataset,
    threat: ThreatModel | Iterable[float],
    mode: Mode = "sound",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
    refine: bool = True,
) -> CertifyResult | None:
    """Certify every triplet of ``data`` in the caller's pixels (images as loaded; the metric's resize and
    normalisation are part of the constant) against ``threat``'s target moving (a list of radii: l2, the
    reference), for the decision the metric computes in its own dtype. One forward pass of the metric per image
    (a float64 pass only for the triplets its rounding bound leaves open; ``refine=False`` skips it: radii as
    sound, up to the dtype's rounding bound smaller, at a float32 pass's cost, as training's per-epoch checks use);
    no attack needed. Under torchrun ranks share the triplets and rank 0 gets the whole result (other ranks
    None)."""
    threat = ThreatModel.of(threat)
    metric = metric.to(device)
    _, source = network_lipschitz(metric)  # refuses metrics without a bound before any work
    assert isinstance(metric, EmbeddingMetric)
    env = env or init_distributed(torch.device(device))
    run = _LipschitzRun(metric, threat, mode, refine)
    with evaluating(metric):  # the caller's training flags come back after
        rows = run_batches(
            data,
            run.step,
            desc=f"certify {metric.name}",
            batch_size=batch_size,
            device=device,
            metric=metric,
            workers=workers,
            progress=progress,
            env=env,
        )
    gathered = gather_objects(sorted(run.constants), env)
    if rows is None:
        return None
    constant = max((c for part in gathered or [] for c in part), default=0.0)
    return CertifyResult(
        metric=metric.name,
        data=getattr(data, "name", "data"),
        threat=threat,
        radius=rows["radius"],
        clean=rows["clean"],
        p=rows["p"],
        dim=_dim(data),
        method="lipschitz",
        mode=mode,
        lipschitz=constant,
        details={
            "lipschitz_source": source,
            "rounding": ROUNDING_NOTE.format(unit=unit_roundoff(metric)),
            "rounding_assumed": sorted(run.generic),
            "dtype": decisions(metric)["procedure"],
            **({"decisions": decisions(metric)} if is_adaptive(metric) else {}),
            "radius_tolerance": RADIUS_TOL,
        },
    )


@torch.no_grad()
def certify_smoothed(
    metric: Metric,
    data: TripletDataset,
    threat: ThreatModel | Iterable[float],
    sigma: float,
    n: int = SmoothingSettings.n,
    n0: int = SmoothingSettings.n0,
    alpha: float = SmoothingSettings.alpha,
    batch_size: int = 8,
    noise_batch: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> CertifyResult | None:
    """Randomized-smoothing certificates (:class:`robustsim.metrics.smoothed.SmoothedMetric`) for every
    triplet, the reference moving. ``clean`` holds the smoothed metric's 2AFC score (an abstention scores
    min(p, 1 - p)); radii are -1 on abstention. Sound for each triplet with probability >= 1 - alpha over the
    noise. Each triplet draws its noise from its own stream, so a sharded run (torchrun) equals one process."""
    from robustsim.metrics.smoothed import ABSTAIN, SmoothedMetric

    threat = ThreatModel.of(threat)
    threat.require_reference("smoothing")
    metric = metric.to(device).eval()
    smooth = SmoothedMetric(metric, sigma, n=n, n0=n0, alpha=alpha, batch=noise_batch, seed=seed)

    def step(batch: dict, tick) -> dict[str, torch.Tensor]:
        p = batch["p"].to(torch.float64)
        decision, radius = smooth.certify(batch["ref"], batch["x0"], batch["x1"], ids=batch["index"])
        score = choice_score(decision.clamp(min=0).double().cpu(), p)
        clean = torch.where(decision.cpu() == ABSTAIN, torch.minimum(p, 1 - p), score)
        tick(int(batch["ref"].shape[0]))
        return {"radius": radius.double(), "clean": clean, "p": p}

    rows = run_batches(
        data,
        step,
        desc=f"smoothing {metric.name}",
        batch_size=batch_size,
        device=device,
        metric=metric,
        workers=workers,
        progress=progress,
        env=env,
        work=lambda b: b,
        unit="triplet",
    )
    if rows is None:
        return None
    radius = rows["radius"]
    return CertifyResult(
        metric=metric.name,
        data=getattr(data, "name", "data"),
        threat=threat,
        radius=radius,
        clean=rows["clean"],
        p=rows["p"],
        dim=_dim(data),
        method="smoothing",
        mode="smoothing",
        details={
            "smoothing": {"sigma": sigma, "n": n, "n0": n0, "alpha": alpha, "seed": seed},
            "abstain_rate": float((radius < 0).double().mean()),
            "certificate": f"for the smoothed metric (Gaussian noise sigma={sigma} on the reference), each "
            f"radius sound with probability >= {1 - alpha} over the noise; not a certificate of the base metric",
        },
    )
