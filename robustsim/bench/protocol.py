"""The benchmark protocol, as data: what every metric is measured on, versioned and printed in every report.

A protocol lists threat models (each a norm, a target and epsilons), the attacks whose per-triplet worst
case is the robust accuracy, their iterations, how many triplets, and the certified radii. ``quick`` is sized
for a CPU (a few minutes per metric); ``full`` is the standard one; ``croce2024`` and ``lipsim`` are the papers'
own evaluations, so a card shows whether a run reproduces the paper's figures (``reported`` in the zoo rows,
keyed by protocol and column):

- ``croce2024``: Croce, Schlarmann, Singh, Hein (2024), ``fra31/perceptual-metrics`` ``eval.py``: APGD (cross
  entropy on the 2AFC logits), 100 iterations, one restart, on the reference image, linf 4/255 and l2 3.0;
- ``lipsim``: Ghazanfari et al. (2024), ``lipsim/core/attack/general_attack.py``: AutoAttack's standard
  ensemble on the reference image (their README's ``--attack AA-L2``), l2 0.5 / 1 / 2 and linf 0.01 / 0.02 /
  0.03 (the paper's radii), certified radii 36, 72, 108 /255.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from robustsim.errors import RobustsimError
from robustsim.settings import BENCH_SMOOTHING
from robustsim.threat import ThreatModel, format_eps

VERSION = 1


@dataclass(frozen=True)
class Protocol:
    name: str
    limit: int | None  # first N triplets of the data (None: all)
    attacks: tuple[str, ...]
    steps: int
    restarts: int
    threat_models: tuple[ThreatModel, ...]
    certified_eps: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255)
    smoothing: dict = field(default_factory=lambda: {"n": BENCH_SMOOTHING.n, "alpha": BENCH_SMOOTHING.alpha})
    version: int = VERSION

    def to_json(self) -> dict:
        """The protocol as plain JSON values (lists, not tuples: what a card stores and reads back)."""
        out = asdict(self)
        out["threat_models"] = [t.to_json() for t in self.threat_models]
        out["attacks"], out["certified_eps"] = list(self.attacks), list(self.certified_eps)
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, n_used: int | None = None) -> str:
        """The protocol in words; ``n_used``: the triplets a run's cells actually used (``--limit`` may cut the
        protocol's own number, and the text then says so)."""
        tms = "; ".join(f"{t.norm} {', '.join(t.labels())}" for t in self.threat_models)
        n = "all" if self.limit is None else f"first {self.limit}"
        if n_used is not None and (self.limit is None or n_used < self.limit):
            n = f"{n_used} ({'all' if self.limit is None else f'the first {self.limit}'} cut by --limit)"
            if self.limit is None:
                n = f"{n_used}"
        return (
            f"protocol {self.name} v{self.version}: {n} triplets; robust = worst case of {', '.join(self.attacks)} "
            f"({self.steps} steps, {self.restarts} restart(s)) on the reference at {tms}; certified at l2 "
            f"{', '.join(format_eps(e) for e in self.certified_eps)}"
        )


THREATS = (ThreatModel("l2", "ref", (0.5, 1.0)), ThreatModel("linf", "ref", (2 / 255, 4 / 255)))
PROTOCOLS = {
    "quick": Protocol("quick", 100, ("apgd-ce", "apgd-margin"), 10, 1, THREATS),
    "full": Protocol("full", None, ("apgd-ce", "apgd-margin", "square"), 100, 1, THREATS),
    "croce2024": Protocol(
        "croce2024",
        None,
        ("apgd-ce",),
        100,
        1,
        (ThreatModel("linf", "ref", (4 / 255,)), ThreatModel("l2", "ref", (3.0,))),
    ),
    "lipsim": Protocol(
        "lipsim",
        None,
        ("autoattack",),
        100,
        1,
        (ThreatModel("l2", "ref", (0.5, 1.0, 2.0)), ThreatModel("linf", "ref", (0.01, 0.02, 0.03))),
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise RobustsimError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class Cell:
    """One cell: ``kind`` clean, robust (at ``threat``'s norm and target, radius ``eps``) or certified (l2)."""

    kind: str
    eps: float | None = None
    threat: ThreatModel | None = None

    @property
    def name(self) -> str:
        """The cell's file name (stable across versions: saved cells keep matching)."""
        if self.kind == "clean":
            return "clean"
        if self.kind == "robust":
            assert self.threat is not None
            return f"robust-{self.threat.key()}-{self.eps:.6g}"
        return f"certified-l2-{self.eps:.6g}"


def protocol_cells(protocol: Protocol) -> tuple[list[Cell], list[list[Cell]], list[Cell]]:
    """(clean, robust per threat model, certified) cells of a protocol."""
    robust = [[Cell("robust", e, tm) for e in tm.eps] for tm in protocol.threat_models]
    return [Cell("clean")], robust, [Cell("certified", e) for e in protocol.certified_eps]
