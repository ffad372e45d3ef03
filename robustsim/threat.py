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
from fractions import Fraction
from typing import Literal, cast

from robustsim.errors import InputError

Norm = Literal["l2", "linf"]
Target = Literal["ref", "x0", "x1", "all"]
NORMS: tuple[str, ...] = ("l2", "linf")
TARGETS: tuple[str, ...] = ("ref", "x0", "x1", "all")
_WHAT = {"ref": "the reference image", "x0": "x0", "x1": "x1", "all": "all three images"}


MAX_L2 = 1e4  # an l2 radius above the diameter of every [0, 1] image of up to 10^8 values moves nothing more


def format_eps(e: float) -> str:
    """An epsilon as text, the shorter of its decimal (``0.5``) and, when it is a whole multiple of 1/255,
    its fraction (``36/255``): every report, table, card and figure writes radii with this function."""
    decimal = f"{e:.6g}"
    k = e * 255
    if 0 < e < 1e9 and abs(k - round(k)) < 1e-6 * max(1.0, k):
        fraction = f"{round(k)}/255"
        if len(fraction) < len(decimal):
            return fraction
    return decimal


def parse_eps(text: str) -> float:
    """``'36/255'`` or ``'0.5'`` -> a finite float >= 0 (InputError otherwise)."""
    try:
        value = float(Fraction(text.strip()))
    except OverflowError:
        raise InputError(f"{text.strip()!r} is not a finite number") from None
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{text.strip()!r} is not a number; write e.g. 0.5,1 or 36/255,72/255") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{text.strip()!r} is not a radius; radii are finite numbers >= 0")
    return value


@dataclass(frozen=True)
class ThreatModel:
    """Which image moves (``target``), in which ``norm`` ball, at which radii ``eps`` (sorted, each >= 0)."""

    norm: Norm = "l2"
    target: Target = "ref"
    eps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.target not in TARGETS:
            raise InputError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if isinstance(self.eps, (str, bytes)) or not isinstance(self.eps, Iterable):
            raise InputError(f"eps must be a list of radii, got {self.eps!r}; pass e.g. eps=[0.5, 1.0]")
        values = []
        for e in self.eps:
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
                raise InputError(f"eps holds {e!r}; radii are finite numbers >= 0, e.g. eps=[0.5, 1.0]")
            if self.norm == "linf" and e >= 1:
                raise InputError(
                    f"a linf radius of {e:g} lets every pixel take any value in [0, 1]; did you mean {e:g}/255?"
                )
            if self.norm == "l2" and e > MAX_L2:
                raise InputError(
                    f"an l2 radius of {e:g} exceeds the diameter of any [0, 1] image of up to 10^8 values "
                    f"(radii up to {MAX_L2:g}); did you mean a smaller radius?"
                )
            values.append(float(e))
        object.__setattr__(self, "eps", tuple(sorted(values)))

    def implausible(self) -> str | None:
        """A one-line warning when an l2 radius looks written for linf (None when all look right): the linf radii
        papers use, k/255 for k in 1, 2, 4, 8, 16, written exactly or to three decimals (8/255 or 0.031); as l2
        radii they move a 64 px image by < 0.001 per pixel. Other small radii (0.02, 0.05) pass quietly."""
        small = [e for e in self.eps if _linf_like(e)]
        if self.norm == "l2" and small:
            return (
                f"warning: l2 radius {format_eps(small[0])} ({small[0]:.4f}) is the size of a linf radius; "
                "l2 radii of images are ~0.1-3 (did you mean --norm linf?)"
            )
        return None

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
        return e * math.sqrt(dim) if self.norm == "linf" else e

    def to_json(self) -> dict:
        return {"norm": self.norm, "target": self.target, "eps": list(self.eps)}

    @classmethod
    def from_json(cls, data: dict) -> ThreatModel:
        return cls(data["norm"], data.get("target", "ref"), tuple(data.get("eps", ())))


LINF_RADII = tuple(k / 255 for k in (1, 2, 4, 8, 16))  # the linf radii papers report


def _linf_like(e: float) -> bool:
    """True when ``e`` is one of LINF_RADII, exactly (up to float rounding) or written to three decimals."""
    return any(abs(e - r) <= 1e-9 or e == round(r, 3) for r in LINF_RADII)
