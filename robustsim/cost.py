"""What a run will cost, said before it starts (``audit``, ``certify``, ``bench``; ``--dry-run`` stops there).

One calibration batch of the run's own data is timed on the run's device: a forward of the 2AFC classifier and a
forward+backward (attacks), or a forward of a batch of noisy images (smoothing). The run's passes are counted from
its settings, as upper bounds (early stopping only saves): every attack step of every epsilon of every triplet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustsim.metrics.base import EmbeddingMetric, Metric, evaluating
from robustsim.threat import Target

HOUR = 3600.0
CALIBRATION = 8  # triplets (or noisy images x 8) in the timed batch


@dataclass(frozen=True)
class Estimate:
    """Passes a run makes at most and the time they take on ``device`` (from one timed batch)."""

    forwards: float
    backwards: float  # forward+backward passes
    seconds: float
    device: str
    units: tuple[str, ...] = ("triplet",)  # what one pass is of

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
        )

    def describe(self) -> str:
        return (
            f"estimated cost: at most {_count(self.forwards)} forwards and {_count(self.backwards)} forward+backwards "
            f"(passes of one {self.unit}), about {duration(self.seconds)} on {self.device} (timed on one batch)"
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
    """Seconds of one forward of one noisy image (smoothing's unit), timed on ``batch`` copies of the first."""
    x = _batch(data, 1, device)["ref"]
    g = torch.Generator(device=x.device).manual_seed(0)  # the caller's global random stream stays untouched
    noisy = (x + 0.25 * torch.randn((batch, *x.shape[1:]), generator=g, device=x.device)).to(metric.dtype)
    with evaluating(metric), torch.no_grad():
        if isinstance(metric, EmbeddingMetric):
            return _timed(lambda: metric._embed(noisy), device) / batch
        fixed = x.expand(batch, -1, -1, -1).to(metric.dtype)
        return _timed(lambda: metric.distance(noisy, fixed), device) / batch


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


def audit_estimate(
    metric: Metric, data, eps: Sequence[float], attacks: Sequence, batch_size: int, device, target: Target = "ref"
) -> Estimate:
    """Every attack at every radius of every triplet (:func:`attack_passes`) and the certificate (two forwards
    per triplet) where the metric has one."""
    from robustsim.certify import has_certificate

    forwards, backwards = attack_passes(len(data), eps, attacks)
    forwards += 2 * len(data) if has_certificate(metric) else 0
    return passes(forwards, backwards, time_triplets(metric, data, batch_size, device, target), device)


def certify_estimate(metric: Metric, data, method: str, batch_size: int, device, samples: int = 0) -> Estimate:
    """lipschitz: two forwards per triplet (the dtype pass and the float64 refinement); smoothing: ``samples``
    noisy forwards per triplet; center smoothing: ``samples`` noisy forwards per image."""
    if method == "lipschitz":
        return passes(2 * len(data), 0, time_triplets(metric, data, batch_size, device), device)
    t = time_images(metric, data, min(samples, 8 * CALIBRATION), device)
    return passes(len(data) * samples, 0, (t, t), device, ("noisy image",))
