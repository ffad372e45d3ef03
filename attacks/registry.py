"""Attack names for the CLI and ``make_attack``: presets as data."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from robustsim.attacks.adapters import AutoAttack, FoolboxAttack
from robustsim.attacks.base import Attack
from robustsim.attacks.geometry import Norm
from robustsim.attacks.gradient import APGD, PGD

from robustsim.errors import RobustsimError

STEP_SIZE = 2.5  # PGD steps of STEP_SIZE * eps / steps cover the ball's diameter with room to spare


def _foolbox(cls_name: str) -> Callable[..., Attack]:
    def build(norm: Norm, steps: int, restarts: int, seed: int) -> Attack:
        import foolbox as fb

        cls = getattr(fb.attacks, cls_name, None)
        usable = (
            inspect.isclass(cls)
            and issubclass(cls, fb.attacks.base.Attack)
            and not inspect.isabstract(cls)
            and hasattr(cls, "distance")
        )
        if not usable:
            raise RobustsimError(
                f"foolbox has no usable attack {cls_name!r}; name a concrete one such as L2PGD or LinfPGD"
            )
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
        if p not in ({"l2": 2, "linf": float("inf")}[norm], None):
            other = "l2" if p == 2 else "linf" if p == float("inf") else f"l{p}"
            raise RobustsimError(f"foolbox:{cls_name} measures {other}, not {norm}; pass --norm {other}")
        return FoolboxAttack(attack, norm, seed)

    return build


ATTACKS: dict[str, tuple[Callable[..., Attack], str]] = {
    "pgd": (
        lambda norm, steps, restarts, seed: PGD(norm, steps, restarts, seed=seed),
        "PGD, margin loss, random start",
    ),
    "pgd-cosine": (
        lambda norm, steps, restarts, seed: PGD(norm, steps, restarts, schedule="cosine", seed=seed),
        "PGD with a cosine step schedule",
    ),
    "apgd-ce": (lambda norm, steps, restarts, seed: APGD(norm, "ce", steps, restarts, seed), "our APGD, cross-entropy"),
    "apgd-margin": (
        lambda norm, steps, restarts, seed: APGD(norm, "margin", steps, restarts, seed),
        "our APGD, binary margin (DLR for 2 classes)",
    ),
    "autoattack": (
        lambda norm, steps, restarts, seed: AutoAttack(norm, "standard", n_iter=steps, seed=seed),
        "pyautoattack standard ensemble (apgd-ce, apgd-t, fab-t, square) on 2 classes",
    ),
    "aa-apgd-ce": (
        lambda norm, steps, restarts, seed: AutoAttack(
            norm, "custom", ["apgd-ce"], n_iter=steps, restarts=restarts, seed=seed
        ),
        "pyautoattack's APGD-CE alone",
    ),
    "square": (
        lambda norm, steps, restarts, seed: AutoAttack(
            norm, "custom", ["square"], n_queries=max(steps, 100), seed=seed
        ),
        "pyautoattack Square (black-box)",
    ),
    "fab": (
        lambda norm, steps, restarts, seed: AutoAttack(
            norm, "custom", ["fab"], n_iter=steps, restarts=restarts, seed=seed
        ),
        "pyautoattack FAB (minimum norm)",
    ),
    "foolbox-pgd": (
        lambda norm, steps, restarts, seed: _foolbox("L2PGD" if norm == "l2" else "LinfPGD")(
            norm, steps, restarts, seed
        ),
        "foolbox L2PGD / LinfPGD",
    ),
}


def list_attacks() -> list[str]:
    return sorted(ATTACKS) + ["foolbox:<AttackClass>"]


def make_attack(name: str, norm: Norm = "l2", steps: int = 50, restarts: int = 1, seed: int = 0) -> Attack:
    """Build an attack by name (see :func:`list_attacks`); ``foolbox:L2CarliniWagnerAttack`` etc. also work."""
    if name.startswith("foolbox:"):
        return _foolbox(name.split(":", 1)[1])(norm, steps, restarts, seed)
    if name not in ATTACKS:
        raise RobustsimError(f"unknown attack {name!r}; choose from {', '.join(list_attacks())}")
    return ATTACKS[name][0](norm, steps, restarts, seed)
