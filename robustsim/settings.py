"""The settings of each kind of run as one frozen value. Each owns its defaults (written once, here), checks
itself on construction (one :class:`~robustsim.errors.InputError` wording per rule) and knows its cost in model
passes (:meth:`passes`). The CLI options, the library functions, the bench protocols and :mod:`robustsim.cost`
all read them: a default changed here changes everywhere.

Smoothing's sample counts differ by purpose, on purpose, each a named value below: a certificate wants many draws
(:data:`CERTIFY_SMOOTHING`), the prediction an attack queries at every radius fewer (:data:`AUDIT_SMOOTHING`), a
bench's certified cells sit between (:data:`BENCH_SMOOTHING`, :data:`BENCH_CENTER`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from robustsim.checks import count_arg
from robustsim.errors import InputError
from robustsim.limits import MAX_EOT, MAX_SIGMA

SIGMA = 0.25  # smoothing noise std in [0, 1] pixel units (Cohen et al.'s middle level), smoothing and center smoothing
ALPHA = 0.001  # failure probability of a smoothing or center-smoothing certificate (Cohen et al.'s choice)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # the attack steps' autocast (robustsim.precision)
STEP_SIZE = 2.5  # PGD steps of STEP_SIZE * eps / steps cover the ball's diameter with room to spare


def _sigma(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"sigma must be a finite number, got {value!r}")
    if not 0 < value <= MAX_SIGMA:
        raise InputError(f"sigma must be in (0, {MAX_SIGMA:g}] (noise std in [0, 1] pixel units), got {value!r}")
    return float(value)


def _alpha(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(f"alpha must be a number in (0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AttackSettings:
    """How hard each attack of a run works: ``steps`` (x ``restarts``, each step's gradient averaged over ``eot``
    draws of a randomised metric), ``seed`` and the steps' ``precision`` (fp32, bf16, fp16, or auto: bf16 on a
    CUDA device that has it; every decision and re-check stays float32)."""

    steps: int = 50
    restarts: int = 1
    seed: int = 0
    eot: int = 1
    precision: str = "fp32"

    def __post_init__(self) -> None:
        count_arg(self.steps, "steps")
        count_arg(self.restarts, "restarts")
        count_arg(self.seed, "seed", 0)
        if count_arg(self.eot, "eot") > MAX_EOT:
            raise InputError(f"eot must be at most {MAX_EOT}, got {self.eot}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def passes(self) -> int:
        """Model calls a gradient attack makes per triplet and radius at most: every step of every restart, each
        with its EoT draws, and the check of its final point."""
        return self.steps * self.eot * self.restarts + 1

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SmoothingSettings:
    """Randomized smoothing of the 2AFC decision (Cohen et al. 2019): Gaussian noise of std ``sigma`` (in [0, 1]
    pixel units) on the reference, ``n`` samples (``n0`` more to select the class; 0: both classes bounded from
    the n samples), each certificate failing with probability at most ``alpha``."""

    sigma: float = SIGMA
    n: int = 512
    n0: int = 0
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _sigma(self.sigma))
        object.__setattr__(self, "alpha", _alpha(self.alpha))
        count_arg(self.n, "n")
        count_arg(self.n0, "n0", 0)

    def passes(self) -> int:
        """Noisy forwards per triplet."""
        return self.n + self.n0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CenterSettings:
    """Center smoothing (Kumar & Goldstein 2021): noise of std ``sigma``, ``candidates`` noisy outputs the centre
    is chosen from, ``n_center`` draws for each of the centre's two checks, ``n`` certification draws, the margin
    ``delta`` over half the mass a centre must hold (the paper's Delta), failure probability ``alpha``."""

    sigma: float = SIGMA
    n: int = 1000
    n_center: int = 2000
    candidates: int = 16
    delta: float = 0.1
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _sigma(self.sigma))
        object.__setattr__(self, "alpha", _alpha(self.alpha))
        count_arg(self.n, "n")
        count_arg(self.n_center, "n_center")
        count_arg(self.candidates, "candidates")
        delta = self.delta
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 0.5:
            raise InputError(f"delta must be a number in (0, 0.5), got {delta!r}")
        object.__setattr__(self, "delta", float(delta))

    def passes(self) -> int:
        """Noisy forwards per image: the candidates, the centre's two checks, the certificate."""
        return self.candidates + 2 * self.n_center + self.n

    def to_json(self) -> dict:
        return asdict(self)


CERTIFY_SMOOTHING = SmoothingSettings()  # a randomized-smoothing certificate
AUDIT_SMOOTHING = SmoothingSettings(n=128)  # each smoothed prediction an audit of a smoothed metric checks
BENCH_SMOOTHING = SmoothingSettings(n=256)  # a bench's certified cells of metrics without a Lipschitz bound
BENCH_CENTER = CenterSettings(n=500, n_center=1500)  # a bench's center-smoothing bound (bench --smoothing)
BENCH_CENTER_IMAGES = 10  # reference images a bench's center-smoothing bound is measured on
RETRIEVAL_ATTACK = AttackSettings(steps=20)  # a retrieval attack's step ranks the whole gallery: fewer steps
