"""The threat model as one value, shared by attacks, certificates and reports (like auto_LiRPA's
perturbation object and RobustBench's threat-model enum).

``ThreatModel(norm, target, eps)``: the attacker moves ``target`` (``ref`` = the reference image, the
standard, or a retrieval query; ``x0`` or ``x1`` = one distorted image; ``all`` = all three) within an
``norm`` ball of each radius in ``eps`` (and the [0, 1] box). With ``all``, attacks use one joint ball over
the three images, which certificates cover by bounding each image's own ball. The value is born where the
user states it (a CLI option, an API argument) and travels unchanged to the attacks, the certificates and the
reports; :meth:`ThreatModel.label` is the one place an epsilon is written as text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from robustsim.ball import MAX_L2, NORMS, Ball, Norm, ball, format_eps, parse_eps
from robustsim.errors import InputError

__all__ = ["MAX_L2", "NORMS", "TARGETS", "Norm", "Target", "ThreatModel", "format_eps", "parse_eps"]

Target = Literal["ref", "x0", "x1", "all"]
TARGETS: tuple[str, ...] = ("ref", "x0", "x1", "all")
_WHAT = {"ref": "the reference image", "x0": "x0", "x1": "x1", "all": "all three images"}


@dataclass(frozen=True)
class ThreatModel:
    """Which image moves (``target``), in which ``norm`` ball, at which radii ``eps`` (sorted, each >= 0)."""

    norm: Norm = "l2"
    target: Target = "ref"
    eps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        lp = ball(self.norm)  # InputError for a norm robustsim has no ball for
        if self.target not in TARGETS:
            raise InputError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if isinstance(self.eps, (str, bytes)) or not isinstance(self.eps, Iterable):
            raise InputError(f"eps must be a list of radii, got {self.eps!r}; pass e.g. eps=[0.5, 1.0]")
        values = []
        for e in self.eps:
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
                raise InputError(f"eps holds {e!r}; radii are finite numbers >= 0, e.g. eps=[0.5, 1.0]")
            lp.check(e)
            values.append(float(e))
        object.__setattr__(self, "eps", tuple(sorted(values)))

    @property
    def ball(self) -> Ball:
        """The norm's ball (:mod:`robustsim.ball`): measures, projects, draws starts, formats radii."""
        return ball(self.norm)

    def implausible(self) -> str | None:
        """A one-line warning when the radii look written for another norm (None when all look right)."""
        return self.ball.implausible(self.eps)

    @classmethod
    def of(
        cls,
        threat: ThreatModel | str | Iterable[float],
        eps: float | Iterable[float] | None = None,
        target: str = "ref",
    ) -> ThreatModel:
        """A ThreatModel from itself, a norm name (``"l2"`` / ``"linf"``) or a list of l2 radii (the reference
        moving), with ``eps`` (a radius or a list) replacing its radii when given."""
        if isinstance(threat, ThreatModel):
            tm = threat
        elif isinstance(threat, str):
            tm = cls(cast(Norm, threat), cast(Target, target))  # both checked in __post_init__
        elif isinstance(threat, Iterable):
            tm = cls("l2", cast(Target, target), tuple(threat))
        else:
            raise InputError(f"threat model must be a ThreatModel, 'l2' / 'linf' or a list of radii, got {threat!r}")
        if eps is None:
            return tm
        if isinstance(eps, (str, bytes)) or not isinstance(eps, (int, float, Iterable)):
            raise InputError(f"eps must be a radius or a list of radii, got {eps!r}; pass e.g. eps=[0.5, 1.0]")
        radii = [eps] if isinstance(eps, (int, float)) else eps
        return cls(tm.norm, tm.target, tuple(radii))

    def label(self, e: float) -> str:
        """One radius as text (:func:`format_eps`)."""
        return format_eps(e)

    def labels(self) -> list[str]:
        return [format_eps(e) for e in self.eps]

    def require_reference(self, what: str) -> None:
        """InputError unless the reference image is the one that moves: ``what`` (smoothing, center smoothing, an
        attack on a smoothed metric) is defined for noise on the reference only. The one wording of this rule."""
        if self.target != "ref":
            raise InputError(f"{what} works on the reference image only; use target 'ref' (--target ref)")

    def key(self) -> str:
        """A short name, e.g. ``l2-ref`` (used to name benchmark cells and report files)."""
        return f"{self.norm}-{self.target}"

    def describe(self) -> str:
        return f"{self.norm} perturbations of {_WHAT[self.target]}"

    def l2_radius(self, e: float, dim: int) -> float:
        """The l2 radius whose ball contains this norm's ball of radius ``e`` in ``dim`` dimensions
        (||delta||_2 <= sqrt(dim) ||delta||_inf): what an l2 certificate must exceed."""
        return self.ball.l2_radius(e, dim)

    def to_json(self) -> dict:
        return {"norm": self.norm, "target": self.target, "eps": list(self.eps)}

    @classmethod
    def from_json(cls, data: dict) -> ThreatModel:
        return cls(data["norm"], data.get("target", "ref"), tuple(data.get("eps", ())))
