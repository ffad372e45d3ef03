"""Center smoothing (Kumar & Goldstein 2021): a certified bound on how far a smoothed metric output can move.

The output function f and its distance d_out (a true metric, as the triangle inequality needs):

- embedding metrics: f(x) = the embedding, d_out = the angle between embeddings; a bound b on the angle is
  the bound 1 - cos(min(b, pi)) on the metric's own 1 - cos between the two smoothed embeddings;
- any other metric: f(x') = metric(x', x), the distance to the clean image x, d_out = |a - b|.

The smoothed output z(x) is the centre of the smallest ball holding half of the distribution of
f(x + N(0, sigma^2 I)), approximated (beta = 2) as in their high-dimensional procedure: of ``candidates`` noisy
outputs, the one with the smallest median distance to ``n_center`` others; it is kept only if a fresh
``n_center`` draws confirm that its median ball holds at least 1/2 + delta - Delta_1 of the mass
(Delta_1 = sqrt(ln(2 / alpha_1) / (2 n_center)) <= delta), else the image abstains. Then, with ``n`` fresh
draws, for every ||delta_x||_2 <= eps (their Theorem 1 with the beta-approximate centre)

    d_out(z(x), z(x + delta_x)) <= 3 R,  R = the q-quantile of d_out(z(x), f(x + noise)),
    q = Phi(Phi^-1(1/2 + delta) + eps / sigma) + sqrt(ln(1 / alpha_2) / (2 n)),

R read as the ceil(q n)-th smallest of the n distances (no interpolation, so never below the empirical
quantile); eps with q > 1 cannot be certified with n draws (bound inf). alpha_1 = alpha_2 = alpha / 2, so the
bound holds with probability >= 1 - alpha over the noise. Each image draws from its own noise streams (the
seed, its id, the draw's purpose), on the metric's device. The certificate is for the smoothed output z, not
for the base metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from scipy.stats import norm

from robustsim.ball import L2
from robustsim.checks import count_arg
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv
from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric, Metric, metric_arg
from robustsim.metrics.smoothed import stream_seed
from robustsim.runner import run_batches
from robustsim.settings import CenterSettings
from robustsim.table import format_table
from robustsim.text import md_code
from robustsim.threat import ThreatModel, format_eps

BETA = 2.0  # the median-of-candidates centre is a 2-approximation of the minimum enclosing ball
_STREAMS = {"candidates": 10, "median": 11, "check": 12, "certify": 13}


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angles (float64) between the rows of ``a`` and ``b`` (broadcast): a metric on directions."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return torch.arccos(cos.clamp(-1.0, 1.0))


MAX_DRAWS = 10**7  # noise draws per check or certificate (the CLI's bound on --n and --n-center)


def quantile_level(eps: float, sigma: float, delta: float, n: int, alpha_2: float) -> float:
    """q of the module docstring: the quantile of the centre's distances that bounds the move at ``eps``."""
    return float(norm.cdf(norm.ppf(0.5 + delta) + eps / sigma)) + math.sqrt(math.log(1 / alpha_2) / (2 * n))


class CenterSmoothing:
    """The center-smoothed output of ``metric`` under Gaussian noise, as an object: :meth:`outputs`,
    :meth:`center` and :meth:`certify` (the bound on its move within l2 radii), see the module docstring.

    ``n`` certification draws, ``n_center`` draws for each of the centre's two checks, ``candidates`` centre
    candidates, failure probability ``alpha``, margin ``delta`` (the paper's Delta), ``batch`` noisy images per
    forward pass, ``seed`` for the noise."""

    def __init__(
        self,
        metric: Metric,
        sigma: float,
        n: int = CenterSettings.n,
        n_center: int = CenterSettings.n_center,
        candidates: int = CenterSettings.candidates,
        alpha: float = CenterSettings.alpha,
        delta: float = CenterSettings.delta,
        batch: int = 256,
        seed: int = 0,
    ) -> None:
        self.metric = metric_arg(metric).eval()
        self.settings = CenterSettings(sigma, n, n_center, candidates, delta, alpha)  # checked there
        self.sigma, self.alpha = self.settings.sigma, self.settings.alpha
        self.n, self.n_center, self.candidates = n, n_center, candidates
        self.batch, self.seed = count_arg(batch, "batch"), count_arg(seed, "seed", 0)
        smallest = math.sqrt(math.log(4 / self.alpha) / (2 * MAX_DRAWS))  # what the most draws can confirm
        if delta < smallest:
            raise InputError(
                f"delta={delta:g} is below what even {MAX_DRAWS:.0e} draws confirm at alpha={self.alpha:g}; "
                f"use delta >= {smallest:.3g} (0.1 is the usual)"
            )
        self.delta = float(delta)
        self.delta_1 = math.sqrt(math.log(4 / self.alpha) / (2 * self.n_center))
        if self.delta_1 > self.delta:
            need = math.ceil(math.log(4 / self.alpha) / (2 * self.delta**2))
            raise InputError(
                f"n_center={n_center} cannot confirm a centre at delta={delta:g}, alpha={alpha:g}; "
                f"use n_center >= {need} (4x that to abstain rarely) or a larger delta"
            )
        self.embedding = isinstance(self.metric, EmbeddingMetric)
        self.output = "angle between embeddings" if self.embedding else "distance to the clean image"

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d_out between outputs (rows, broadcast), float64."""
        return angle(a, b) if self.embedding else (a.double() - b.double()).abs().squeeze(-1)

    def to_metric_units(self, bound: torch.Tensor) -> torch.Tensor:
        """A bound on d_out as a bound on the metric's own distance between the two smoothed outputs."""
        if not self.embedding:
            return bound
        return torch.where(torch.isfinite(bound), 1 - torch.cos(bound.clamp(max=math.pi)), bound)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, k: int, image: int, purpose: str, clean: torch.Tensor | None = None):
        """(k, D) outputs f of k noisy copies of the one image ``x`` (1, 3, H, W), from stream ``purpose`` of
        image id ``image``; ``clean`` is the fixed image of the distance output (default ``x``)."""
        m = self.metric
        g = torch.Generator(device=x.device).manual_seed(stream_seed(self.seed, image, _STREAMS[purpose]))
        fixed = m.as_input(x if clean is None else clean)
        parts = []
        for start in range(0, k, self.batch):
            j = min(self.batch, k - start)
            noise = torch.randn((j, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            noisy = m.as_input(x + self.sigma * noise)
            if isinstance(m, EmbeddingMetric):
                parts.append(m._embed(noisy).double())
            else:
                parts.append(m.distance(noisy, fixed.expand(j, -1, -1, -1)).double()[:, None])
        return torch.cat(parts)

    def _center(self, x: torch.Tensor, image: int, clean: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        cands = self.outputs(x, self.candidates, image, "candidates", clean)
        others = self.outputs(x, self.n_center, image, "median", clean)
        medians = torch.stack([self.distance(others, c).median() for c in cands])
        best = int(medians.argmin())
        center, radius = cands[best], medians[best]
        fresh = self.outputs(x, self.n_center, image, "check", clean)
        frac = float((self.distance(fresh, center) <= radius).double().mean())
        return center, 0.5 - (frac - self.delta_1) <= self.delta

    def center(self, x: torch.Tensor, ids=None, clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(centres (B, D) float64, confirmed (B,) bool) of a batch; image i draws from the streams of
        ``ids[i]`` (default its position). ``clean`` (B, 3, H, W): the fixed images of the distance output
        (default ``x`` itself)."""
        ids = torch.arange(x.shape[0]) if ids is None else torch.as_tensor(ids).reshape(-1)
        got = [
            self._center(x[i : i + 1], int(ids[i]), None if clean is None else clean[i : i + 1])
            for i in range(x.shape[0])
        ]
        return torch.stack([c for c, _ in got]), torch.tensor([ok for _, ok in got])

    def certify(self, x: torch.Tensor, eps: float | Sequence[float], ids=None) -> dict[str, torch.Tensor]:
        """For each image and each l2 radius of ``eps`` (one radius or a list, in increasing order): ``bound`` (B,
        len(eps)) float64, the certified bound in the metric's units on the move of the smoothed output (inf where
        a radius needs more draws, nan on abstention); ``angle`` the same bound on d_out; ``abstain`` (B,) bool;
        for distance outputs, ``center`` (B,) the smoothed distance of x to itself."""
        eps = list(ThreatModel.of("l2", eps).eps)  # a radius or a list, checked (one line otherwise)
        ids = torch.arange(x.shape[0]) if ids is None else torch.as_tensor(ids).reshape(-1)
        levels = [quantile_level(e, self.sigma, self.delta, self.n, self.alpha / 2) for e in eps]
        bound = torch.full((x.shape[0], len(eps)), math.nan, dtype=torch.float64)
        abstain = torch.zeros(x.shape[0], dtype=torch.bool)
        centre_value = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
        for i in range(x.shape[0]):
            image = int(ids[i])
            c, ok = self._center(x[i : i + 1], image, None)
            if not self.embedding:
                centre_value[i] = float(c[0])
            if not ok:
                abstain[i] = True
                continue
            d = self.distance(self.outputs(x[i : i + 1], self.n, image, "certify"), c).sort().values
            for j, q in enumerate(levels):
                bound[i, j] = math.inf if q > 1 else (1 + BETA) * float(d[math.ceil(q * self.n) - 1])
        return {
            "angle": bound,
            "bound": self.to_metric_units(bound),
            "abstain": abstain,
            "center": centre_value,
        }

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, n={self.n}, n_center={self.n_center}, candidates={self.candidates}, "
            f"alpha={self.alpha}, delta={self.delta}"
        )

    def __repr__(self) -> str:
        return f"CenterSmoothing({self.metric.name!r}, {self.extra_repr()})"


@dataclass
class CenterResult:
    """Per-image certified bounds (metric units) on the move of the center-smoothed output at each radius."""

    metric: str
    data: str
    threat: ThreatModel
    bound: torch.Tensor  # (N, E) float64; inf: not certifiable with n draws; nan: abstained
    abstain: torch.Tensor  # (N,) bool
    index: torch.Tensor  # (N,) the images' ids (their triplets' indices; the reference image)
    output: str
    settings: dict = field(default_factory=dict)
    center: torch.Tensor | None = None  # (N,) distance outputs: the smoothed d(x, x)

    @property
    def eps(self) -> list[float]:
        return list(self.threat.eps)

    @property
    def abstain_rate(self) -> float:
        return float(self.abstain.double().mean()) if len(self.abstain) else math.nan

    def median_bound(self, eps: float) -> float:
        """Median certified bound at ``eps`` over the images that did not abstain (inf counts as inf)."""
        j = self.eps.index(eps)
        b = self.bound[~self.abstain, j]
        return float(b.median()) if b.numel() else math.nan

    def largest_bound(self, eps: float) -> float:
        """The largest finite certified bound at ``eps`` over the images that did not abstain (nan: none)."""
        b = self.bound[~self.abstain, self.eps.index(eps)]
        finite = b[torch.isfinite(b)]
        return float(finite.max()) if finite.numel() else math.nan

    def describe(self) -> str:
        s = self.settings
        return (
            f"center smoothing of the {self.output} (a certificate of the SMOOTHED output, sigma={s['sigma']:g}, "
            f"n={s['n']}, alpha={s['alpha']:g}: each bound holds with probability >= {1 - s['alpha']:g}); "
            f"abstained on {100 * self.abstain_rate:.1f}%; n={len(self.abstain)} images"
        )

    def table(self, markdown: bool = False) -> str:
        rows = []
        for j, e in enumerate(self.eps):
            b = self.bound[~self.abstain, j]
            largest = self.largest_bound(e)
            rows.append(
                (
                    self.threat.label(e),
                    self.median_bound(e),
                    None if math.isnan(largest) else largest,
                    f"{int(torch.isfinite(b).sum())}/{len(self.abstain)}",
                )
            )
        return format_table(["eps (l2)", "median bound", "largest bound", "certified"], rows, markdown=markdown)

    def markdown(self) -> str:
        title = f"# Center-smoothing bounds of {md_code(self.metric)} on {md_code(self.data)}"
        return f"{title}\n\n{self.describe()}\n\n{self.table(True)}\n"

    def figure(self):
        """The median and the largest certified bound against eps, in the style of every robustsim curve."""
        from robustsim.plots import Curve, accuracy_figure

        curves = [
            Curve("median certified bound", self.eps, [self.median_bound(e) for e in self.eps]),
            Curve("largest certified bound", self.eps, [self.largest_bound(e) for e in self.eps], "--"),
        ]
        title = f"{self.metric} on {self.data} (center smoothing, sigma {self.settings['sigma']:g})"
        return accuracy_figure(curves, "l2", title, ylabel="bound on the smoothed output's move", percent=False)

    def figures(self) -> dict:
        return {"bound.png": self.figure()}

    def to_json(self) -> dict:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else (v if math.isfinite(v) else None)

        images = []
        for i in range(len(self.abstain)):
            row = {
                "index": int(self.index[i]),
                "abstain": bool(self.abstain[i]),
                "bound": [None if bool(self.abstain[i]) else num(float(b)) for b in self.bound[i]],
            }
            if self.center is not None:
                row["center"] = num(float(self.center[i]))
            images.append(row)
        return {
            "version": 1,
            "kind": "center-smoothing",
            "metric": self.metric,
            "data": self.data,
            "norm": "l2",
            "eps": self.eps,
            "threat_model": self.threat.to_json(),
            "output": self.output,
            **self.settings,
            "confidence": 1 - self.settings["alpha"],
            "abstain_rate": self.abstain_rate,
            "median_bound": [num(self.median_bound(e)) for e in self.eps],
            "note": "bound: certified upper bound (metric units) on the distance between the smoothed outputs of "
            "x and of any x + delta, ||delta||_2 <= eps; null: abstained, or eps needs more draws",
            "images": images,
        }

    def __repr__(self) -> str:
        at = ", ".join(f"{self.median_bound(e):.4g} at {format_eps(e)}" for e in self.eps)
        return f"CenterResult({self.metric} on {self.data}, n={len(self.abstain)}: median bound {at})"


def center_threat(threat: ThreatModel | Iterable[float]) -> ThreatModel:
    """``threat`` as center smoothing certifies it (InputError otherwise): l2 balls around the reference image."""
    threat = ThreatModel.of(threat)
    if threat.ball is not L2:
        raise InputError("center smoothing certifies l2 balls; use norm l2 (--norm l2)")
    threat.require_reference("center smoothing")
    return threat


@torch.no_grad()
def certify_center(
    metric: Metric,
    data: TripletDataset,
    threat: ThreatModel | Iterable[float],
    sigma: float,
    n: int = CenterSettings.n,
    n_center: int = CenterSettings.n_center,
    candidates: int = CenterSettings.candidates,
    alpha: float = CenterSettings.alpha,
    delta: float = CenterSettings.delta,
    batch_size: int = 8,
    noise_batch: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> CenterResult | None:
    """Center-smoothing bounds (:class:`CenterSmoothing`) for the reference image of every triplet at every l2
    radius of ``threat``. Sharded under torchrun (rank 0 gets the result, others None)."""
    threat = center_threat(threat)
    metric = metric.to(device).eval()
    smooth = CenterSmoothing(metric, sigma, n, n_center, candidates, alpha, delta, noise_batch, seed)

    def step(batch: dict, tick) -> dict[str, torch.Tensor]:
        got = smooth.certify(batch["ref"], threat.eps, ids=batch["index"])
        tick(int(batch["ref"].shape[0]))
        return {"bound": got["bound"], "abstain": got["abstain"], "center": got["center"], "index": batch["index"]}

    rows = run_batches(
        data,
        step,
        desc=f"center smoothing {metric.name}",
        batch_size=batch_size,
        device=device,
        metric=metric,
        workers=workers,
        progress=progress,
        env=env,
        work=lambda b: b,
        unit="image",
        images=("ref",),
    )
    if rows is None:
        return None
    settings = {"sigma": sigma, "n": n, "n_center": n_center, "candidates": candidates, "alpha": alpha}
    settings |= {"delta": delta, "seed": seed}
    return CenterResult(
        metric=metric.name,
        data=getattr(data, "name", "data"),
        threat=threat,
        bound=rows["bound"],
        abstain=rows["abstain"],
        index=rows["index"],
        output=smooth.output,
        settings=settings,
        center=None if smooth.embedding else rows["center"],
    )
