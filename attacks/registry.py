"""The attacks ``make_attack`` and the CLI know, as rows of one table: name, builder, fixed options, the run
settings it takes, description. A new attack is one class and one :func:`register_attack` call; the CLI's
help, ``list_attacks()`` and the contract test over every attack derive from this table."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from robustsim.attacks.adapters import AutoAttack, FoolboxAttack
from robustsim.attacks.base import Attack
from robustsim.attacks.geometry import Norm
from robustsim.attacks.gradient import APGD, PGD
from robustsim.ball import ball, ball_of_p
from robustsim.errors import RobustsimError
from robustsim.precision import Precision, check_precision
from robustsim.settings import STEP_SIZE, AttackSettings
from robustsim.threat import ThreatModel

SETTINGS = ("steps", "restarts", "seed", "precision")
EOT = (*SETTINGS, "eot")  # the attacks that average their gradient over the metric's randomness


@dataclass(frozen=True)
class AttackSpec:
    """One attack: ``build(norm, **settings, **options)`` returns it; ``settings`` names which of the run's
    settings (steps, restarts, seed) it takes."""

    name: str
    build: Callable[..., Attack]
    description: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    settings: tuple[str, ...] = SETTINGS

    def make(
        self, norm: Norm, steps: int, restarts: int, seed: int, eot: int = 1, precision: Precision = "fp32"
    ) -> Attack:
        if eot != 1 and "eot" not in self.settings:
            takes = ", ".join(n for n, a in ATTACKS.items() if "eot" in a.settings)
            raise RobustsimError(f"{self.name} has no EoT (gradient draws per step); --eot works with {takes}")
        if precision != "fp32" and "precision" not in self.settings:
            raise RobustsimError(f"{self.name} runs in float32 only; use --precision fp32")
        given = {"steps": steps, "restarts": restarts, "seed": seed, "eot": eot, "precision": precision}
        return self.build(norm, **{k: given[k] for k in self.settings}, **self.options)


def foolbox_attack(
    norm: Norm, *, steps: int, seed: int, precision: Precision = "fp32", cls_name: str | None = None
) -> Attack:
    """A foolbox 3 attack class by name (default L2PGD / LinfPGD for ``norm``), built with ``steps`` and a
    step size that covers the ball."""
    import foolbox as fb

    cls_name = cls_name or f"{ball(norm).foolbox}PGD"
    cls = getattr(fb.attacks, cls_name, None)
    usable = (
        inspect.isclass(cls)
        and issubclass(cls, fb.attacks.base.Attack)
        and not inspect.isabstract(cls)
        and hasattr(cls, "distance")
    )
    if not usable:
        raise RobustsimError(f"foolbox has no usable attack {cls_name!r}; name a concrete one such as L2PGD or LinfPGD")
    params = inspect.signature(cls).parameters
    kwargs: dict[str, float] = {}
    if "rel_stepsize" in params:  # foolbox's default (0.025) covers half the ball in 20 steps
        kwargs["rel_stepsize"] = STEP_SIZE / steps
    try:
        attack = cls(steps=steps, **kwargs)
    except TypeError:
        try:
            attack = cls()
        except TypeError as err:
            raise RobustsimError(f"foolbox:{cls_name} cannot be built with defaults ({err})") from None
    p = getattr(attack.distance, "p", None)
    if p is not None and ball_of_p(p) is not ball(norm):
        measured = ball_of_p(p)
        other = measured.name if measured is not None else f"l{p}"
        raise RobustsimError(f"foolbox:{cls_name} measures {other}, not {norm}; pass --norm {other}")
    return FoolboxAttack(attack, norm, seed=seed, precision=precision)


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(
    name: str,
    build: Callable[..., Attack],
    description: str,
    *,
    options: Mapping[str, Any] | None = None,
    settings: tuple[str, ...] = SETTINGS,
) -> None:
    """Add an attack to the table (see :class:`AttackSpec`)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise RobustsimError(f"attack name must be a non-empty string without ':', got {name!r}")
    if not callable(build):
        raise RobustsimError(f"attack {name!r}: build must be callable, got {build!r}")
    unknown = set(settings) - set(EOT)
    if unknown:
        raise RobustsimError(f"attack {name!r}: unknown settings {sorted(unknown)}; choose from {', '.join(EOT)}")
    ATTACKS[name] = AttackSpec(name, build, description, MappingProxyType(dict(options or {})), settings)


register_attack("pgd", PGD, "PGD, margin loss, random start", settings=EOT)
register_attack("pgd-cosine", PGD, "PGD with a cosine step schedule", options={"schedule": "cosine"}, settings=EOT)
register_attack("apgd-ce", APGD, "our APGD, cross-entropy", options={"loss": "ce"}, settings=EOT)
register_attack(
    "apgd-margin", APGD, "our APGD, binary margin (DLR for 2 classes)", options={"loss": "margin"}, settings=EOT
)
register_attack(
    "autoattack",
    AutoAttack,
    "pyautoattack standard ensemble (apgd-ce, apgd-t, fab-t, square) on 2 classes",
    settings=("steps", "seed", "precision"),
)
register_attack(
    "aa-apgd-ce", AutoAttack, "pyautoattack's APGD-CE alone", options={"version": "custom", "attacks": ["apgd-ce"]}
)
register_attack(
    "square",
    AutoAttack,
    "pyautoattack Square (black-box; max(steps, 100) queries)",
    options={"version": "custom", "attacks": ["square"]},
    settings=("steps", "seed", "precision"),
)
register_attack("fab", AutoAttack, "pyautoattack FAB (minimum norm)", options={"version": "custom", "attacks": ["fab"]})
register_attack("foolbox-pgd", foolbox_attack, "foolbox L2PGD / LinfPGD", settings=("steps", "seed", "precision"))


def list_attacks() -> list[str]:
    return sorted(ATTACKS) + ["foolbox:<AttackClass>"]


def make_attack(
    name: str,
    threat: ThreatModel | str = "l2",
    *,
    steps: int = AttackSettings.steps,
    restarts: int = AttackSettings.restarts,
    seed: int = AttackSettings.seed,
    eot: int = AttackSettings.eot,
    precision: Precision = "fp32",
) -> Attack:
    """Build an attack by name (see :func:`list_attacks`) for ``threat``'s norm (a ThreatModel or "l2" / "linf");
    ``foolbox:L2CarliniWagnerAttack`` etc. also work. ``eot`` > 1: the gradient attacks average each step's
    gradient over that many draws of a randomised metric (Expectation over Transformation). ``precision``: the
    steps' autocast (bf16 / fp16 steps are followed by a float32 finish: :meth:`.sweep.Sweep.finish`)."""
    norm, precision = ThreatModel.of(threat).norm, check_precision(precision)
    if name.startswith("foolbox:") and eot != 1:
        raise RobustsimError(f"{name} has no EoT (gradient draws per step); use pgd or apgd-ce with eot")
    if name.startswith("foolbox:"):
        cls_name = name.split(":", 1)[1]
        return foolbox_attack(norm, steps=steps, seed=seed, precision=precision, cls_name=cls_name)
    if name not in ATTACKS:
        raise RobustsimError(f"unknown attack {name!r}; choose from {', '.join(list_attacks())}")
    return ATTACKS[name].make(norm, steps, restarts, seed, eot, precision)
