"""The threat model as one value, shared by attacks, certificates and reports (like auto_LiRPA's
perturbation object and RobustBench's threat-model enum).

``ThreatModel(norm, target, eps)``: the attacker moves ``target`` (``ref`` = the reference image, the
standard; ``x0`` or ``x1`` = one distorted image; ``all`` = all three) within an ``norm`` ball of each
radius in ``eps`` (and the [0, 1] box). With ``all``, attacks use one joint ball over the three images,
which certificates cover by bounding each image's own ball.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Norm = Literal["l2", "linf"]
Target = Literal["ref", "x0", "x1", "all"]
NORMS: tuple[str, ...] = ("l2", "linf")
TARGETS: tuple[str, ...] = ("ref", "x0", "x1", "all")


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm = "l2"
    target: Target = "ref"
    eps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        object.__setattr__(self, "eps", tuple(sorted(float(e) for e in self.eps)))

    def key(self) -> str:
        """A short name, e.g. ``l2-ref`` (used to name benchmark cells and report files)."""
        return f"{self.norm}-{self.target}"

    def describe(self) -> str:
        what = {"ref": "the reference image", "x0": "x0", "x1": "x1", "all": "all three images"}[self.target]
        return f"{self.norm} perturbations of {what}"

    def to_json(self) -> dict:
        return {"norm": self.norm, "target": self.target, "eps": list(self.eps)}
