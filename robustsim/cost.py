"""What a run will cost, said before it starts (``audit``, ``certify``, ``bench``; ``--dry-run`` stops there).

Two figures. The passes a run makes at most, counted from its settings (every attack step of every radius of every
triplet: early stopping only saves). And the time it is expected to take: smoothing's draws, whose number is fixed,
are counted and timed on one calibration batch of the run's own data on its device; attacks, whose work depends on
how soon each triplet breaks, and Lipschitz certificates, whose float64 refinement depends on the triplet, are run
for real on a trial of a few triplets spread over the data (:func:`trial_size`), their time scaled to the whole.
``benchmarks/bench_estimates.py`` prints estimated against measured for the documented examples.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustsim.metrics.base import EmbeddingMetric, Metric, evaluating
from robustsim.threat import Target

HOUR = 3600.0
CALIBRATION = 8  # triplets (or noisy images x 8) in the timed batch
TRIAL = 8  # triplets an attack's trial run attacks at most (spread over the data)
TRIAL_FROM = 40  # smaller runs are estimated from counted passes


def trial_size(n: int) -> int:
    """Triplets a trial run of a run over ``n`` attacks: at most a tenth of them and at most TRIAL; 0 below
    TRIAL_FROM (the counted passes then serve: a trial would be a large share of so short a run)."""
    return 0 if n < TRIAL_FROM else min(TRIAL, n // 10)


@dataclass(frozen=True)
class Estimate:
    """Passes a run makes at most and the time they take on ``device`` (from one timed batch)."""

    forwards: float
    backwards: float  # forward+backward passes
    seconds: float
    device: str
    units: tuple[str, ...] = ("triplet",)  # what one pass is of
    trial: tuple[int, int] | None = None  # (k, n): the attacks' time is a trial run's on k of the n triplets

    @property
    def unit(self) -> str:
        return " or ".join(self.units)

    def __add__(self, other: Estimate) -> Estimate:
        units = self.units + tuple(u for u in other.units if u not in self.units)
        return Estimate(
            self.forwards + other.forwards,
            self.backwards + other.backwards,
            self.seconds + other.seconds,
            self.device,
            units,
            self.trial or other.trial,
        )

    def describe(self) -> str:
        how = "timed on one batch" if self.trial is None else f"timed on {self.trial[0]} of {self.trial[1]} triplets"
        return (
            f"estimated cost: about {duration(self.seconds)} on {self.device} ({how}); at most "
            f"{_count(self.forwards)} forwards and {_count(self.backwards)} forward+backwards (passes of one "
            f"{self.unit})"
        )

    def warning(self) -> str | None:
        """A line for runs of more than an hour on a CPU (None otherwise)."""
        if self.seconds <= HOUR or not self.device.startswith("cpu"):
            return None
        return (
            f"this run may take {duration(self.seconds)} on this CPU: pass --limit N to run a subset first, or "
            "run on a GPU (--device cuda)"
        )


def _count(n: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f} {suffix}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * HOUR:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _batch(data, batch_size: int, device) -> dict[str, torch.Tensor]:
    items = [data[i] for i in range(min(batch_size, len(data)))]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in ("ref", "x0", "x1")}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int = 1) -> float:
    """Seconds of ``fn()`` after one warm-up call (the faster of ``repeats`` timed calls)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def time_triplets(metric: Metric, data, batch_size: int, device, target: Target = "ref") -> tuple[float, float]:
    """(seconds of one 2AFC forward, of one forward+backward) per triplet, timed on the data's first batch."""
    from robustsim.attacks.twoafc import TwoAFCClassifier

    b = _batch(data, min(batch_size, CALIBRATION), device)
    n = b["ref"].shape[0]
    with evaluating(metric):
        clf = TwoAFCClassifier(metric, b["ref"], b["x0"], b["x1"], target)
        x = clf.clean_input()

        def forward() -> None:
            with torch.no_grad():
                clf(x)

        def forward_backward() -> None:
            xa = x.detach().requires_grad_(True)
            torch.autograd.grad(clf(xa).sum(), xa)

        return _timed(forward, device) / n, _timed(forward_backward, device) / n


def time_images(metric: Metric, data, batch: int, device) -> float:
    """Seconds of one noisy image (smoothing's unit), timed on ``batch`` of them: drawing its noise and its forward
    (an embedding; for a distance metric its distances to both x0 and x1, as smoothing computes them)."""
    x = _batch(data, 1, device)["ref"]
    g = torch.Generator(device=x.device).manual_seed(0)  # the caller's global random stream stays untouched
    fixed = x.expand(batch, -1, -1, -1).to(metric.dtype)

    def noisy() -> torch.Tensor:
        return (x + 0.25 * torch.randn((batch, *x.shape[1:]), generator=g, device=x.device)).to(metric.dtype)

    with evaluating(metric), torch.no_grad():
        if isinstance(metric, EmbeddingMetric):
            return _timed(lambda: metric._embed(noisy()), device) / batch

        def distances() -> None:
            z = noisy()
            metric.distance(z, fixed)
            metric.distance(z, fixed)

        return _timed(distances, device) / batch


def passes(
    forwards: float, backwards: float, times: tuple[float, float], device, units: tuple[str, ...] = ("triplet",)
) -> Estimate:
    """An estimate from counted passes and the seconds of one forward and one forward+backward (``times``)."""
    return Estimate(forwards, backwards, forwards * times[0] + backwards * times[1], str(device), units)


def attack_passes(n: int, eps: Sequence[float], attacks: Sequence) -> tuple[int, int]:
    """(forwards, forward+backwards) of ``attacks`` on ``n`` triplets at every radius of ``eps``: per attack the
    fixed embeddings and the clean check, per radius a verification and every step (x restarts x EoT draws)."""
    e = len(eps)
    return n * sum(2 + e for _ in attacks), n * e * sum(a.work() - 1 for a in attacks)


@functools.cache
def figure_seconds() -> float:
    """Seconds this machine takes to draw and save a report figure (two panels of curves with legends, PNG at the
    reports' 150 dpi): a bench draws one per metric card and one leaderboard, whatever the size of its data."""
    import io

    import matplotlib.pyplot as plt

    from robustsim.plots import Curve, draw_curves

    t0 = time.perf_counter()
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for ax in axes:
        draw_curves(ax, [Curve(name, [0.25, 0.5, 1.0], [0.8, 0.5, 0.2]) for name in ("a", "b", "c")], "l2", "", "")
    fig.savefig(io.BytesIO(), format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return time.perf_counter() - t0


def spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (first and last included)."""
    if n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def trial_seconds(
    metric, data, threats: Sequence, attacks: Sequence[Sequence], batch_size: int, device, times: tuple[float, float]
) -> float:
    """Seconds the ``attacks`` of each threat model (``attacks[i]`` for ``threats[i]``) take on all of ``data``:
    each run for real, as a run does (the clean images embedded once and shared), on :func:`trial_size` triplets
    spread over the data, scaled by how many more the run has; plus audit's examples (one attack per radius on
    :data:`~robustsim.audit.N_EXAMPLES` triplets), whose number does not grow with the data. Below TRIAL_FROM
    triplets: the counted passes times ``times`` (the caller's :func:`time_triplets`, which also warmed the metric
    up)."""
    from robustsim.attacks.twoafc import CleanEmbeddings
    from robustsim.audit import N_EXAMPLES
    from robustsim.dist import local_env
    from robustsim.metrics.smoothed import SmoothedMetric

    if not trial_size(len(data)):  # counted passes (upper bounds) timed on one batch
        smoothed = isinstance(metric, SmoothedMetric)
        draw = time_images(metric.metric, data, min(metric.n, 8 * CALIBRATION), device) if smoothed else 0.0
        seconds = 0.0
        for threat, built in zip(threats, attacks, strict=True):
            f, b = attack_passes(len(data), threat.eps, built)
            seconds += f * times[0] + b * times[1]
            if smoothed:
                seconds += metric.n * (1 + len(threat.eps)) * len(built) * len(data) * draw
        return seconds
    sample = data.select(spread(len(data), trial_size(len(data))))
    k = len(sample)
    if not k:
        return 0.0
    clean, env, first = CleanEmbeddings(), local_env(torch.device(device)), None
    _sync(device)
    t0 = time.perf_counter()
    for threat, built in zip(threats, attacks, strict=True):
        for att in built:
            t1 = time.perf_counter()
            att(metric, sample, threat, batch_size=batch_size, device=device, progress=False, env=env, clean=clean)
            first = time.perf_counter() - t1 if first is None else first
    _sync(device)
    return (time.perf_counter() - t0) * len(data) / k + (first or 0.0) * min(N_EXAMPLES, k) / k


def audit_estimate(metric, data, threat, attacks: Sequence, batch_size: int, device) -> Estimate:
    """Counted: every attack at every radius of every triplet (:func:`attack_passes`) and the certificate (two
    forwards per triplet) where the metric has one. Timed: a trial run of the attacks (:func:`trial_seconds`) and
    the certificate's passes. ``metric`` may be a SmoothedMetric (an audit of the smoothed prediction)."""
    from robustsim.certify import has_certificate
    from robustsim.metrics.smoothed import SmoothedMetric

    smoothed = isinstance(metric, SmoothedMetric)
    base = metric.metric if smoothed else metric
    forwards, backwards = attack_passes(len(data), threat.eps, attacks)
    certificate = 2 * len(data) if not smoothed and has_certificate(base) else 0
    # a smoothed audit's clean check and each radius's verdict are smoothed predictions of n noisy images each
    noisy = metric.n * (1 + len(threat.eps)) * len(attacks) * len(data) if smoothed else 0
    times = time_triplets(base, data, batch_size, device, threat.target)  # also the warm-up before a trial
    seconds = trial_seconds(metric, data, [threat], [attacks], batch_size, device, times)
    seconds += certificate_seconds(base, data, batch_size, device, times) if certificate else 0.0
    units = ("triplet", "noisy image") if smoothed else ("triplet",)
    trial = (trial_size(len(data)), len(data)) if trial_size(len(data)) else None
    return Estimate(forwards + certificate + noisy, backwards, seconds, str(device), units, trial)


def certificate_seconds(
    metric: Metric, data, batch_size: int, device, times: tuple[float, float] | None = None
) -> float:
    """Seconds of a Lipschitz certificate of all of ``data``: :func:`~robustsim.certify.certify_2afc` run for real on
    2 and on 16 triplets spread over the data (the pass with its rounding bounds, the float64 refinement of the
    triplets that need it, the constant's computation), a line through the two times extended to the whole. Below
    TRIAL_FROM triplets: two forwards per triplet at ``times`` (the caller's :func:`time_triplets`, else timed here)."""
    from robustsim.certify import certify_2afc
    from robustsim.dist import local_env

    def timed(k: int) -> tuple[int, float]:
        sample = data.select(spread(len(data), k))
        _sync(device)
        t0 = time.perf_counter()
        certify_2afc(metric, sample, [0.1], batch_size=batch_size, device=device, progress=False, env=env)
        _sync(device)
        return len(sample), time.perf_counter() - t0

    env = local_env(torch.device(device))
    if not trial_size(len(data)):
        times = times or time_triplets(metric, data, batch_size, device)
        return 2 * len(data) * times[0]
    timed(1)  # warm-up: the first call's allocations and caches
    (k1, t1), (k2, t2) = timed(2), timed(16)
    if k2 <= k1:
        return t2 * len(data) / k2
    per = max(t2 - t1, 0.0) / (k2 - k1)
    return max(t1 - per * k1, 0.0) + per * len(data)


def certify_estimate(metric: Metric, data, method: str, batch_size: int, device, samples: int = 0) -> Estimate:
    """lipschitz: two forwards per triplet counted (the dtype pass and the float64 refinement), the time from trial
    certificates (:func:`certificate_seconds`); smoothing: ``samples`` noisy forwards per triplet; center smoothing:
    ``samples`` noisy forwards per image."""
    if method == "lipschitz":
        seconds = certificate_seconds(metric, data, batch_size, device)
        trial = (16, len(data)) if trial_size(len(data)) else None
        return Estimate(2 * len(data), 0, seconds, str(device), ("triplet",), trial)
    t = time_images(metric, data, min(samples, 8 * CALIBRATION), device)
    return passes(len(data) * samples, 0, (t, t), device, ("noisy image",))
