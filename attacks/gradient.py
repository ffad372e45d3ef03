"""Our white-box attacks: PGD and APGD (cross-entropy or binary margin loss), each with ``eot`` gradient draws
per step for randomised metrics (Expectation over Transformation)."""

from __future__ import annotations

from robustsim.attacks.base import Attack
from robustsim.attacks.geometry import Norm
from robustsim.attacks.optim import apgd, classifier_objective, pgd
from robustsim.errors import InputError
from robustsim.limits import MAX_EOT
from robustsim.precision import Precision
from robustsim.settings import STEP_SIZE


def check_eot(eot: object) -> int:
    if isinstance(eot, bool) or not isinstance(eot, int) or not 1 <= eot <= MAX_EOT:
        raise InputError(f"eot must be an integer in [1, {MAX_EOT}] (gradient draws per step), got {eot!r}")
    return eot


class PGD(Attack):
    """PGD, step ``step_size * eps / steps``, random start, restarts, constant or cosine schedule."""

    name = "pgd"

    def __init__(
        self,
        norm: Norm = "l2",
        *,
        steps: int = 50,
        restarts: int = 1,
        seed: int = 0,
        step_size: float = STEP_SIZE,
        schedule: str = "constant",
        loss: str = "margin",
        eot: int = 1,
        precision: Precision = "fp32",
    ) -> None:
        super().__init__(norm, seed, precision)
        self.steps, self.restarts, self.step_size, self.schedule, self.loss = steps, restarts, step_size, schedule, loss
        self.eot = check_eot(eot)

    def run(self, forward, x, y, eps, generator):
        return pgd(
            classifier_objective(forward, y, self.loss),
            x,
            eps,
            self.norm,
            steps=self.steps,
            restarts=self.restarts,
            step_size=self.step_size,
            schedule=self.schedule,
            generator=generator,
            eot=self.eot,
        )


class APGD(Attack):
    """APGD (Croce & Hein 2020) with loss ``ce`` or ``margin`` (binary DLR numerator)."""

    def __init__(
        self,
        norm: Norm = "l2",
        *,
        steps: int = 100,
        restarts: int = 1,
        seed: int = 0,
        loss: str = "ce",
        eot: int = 1,
        precision: Precision = "fp32",
    ) -> None:
        super().__init__(norm, seed, precision)
        self.loss, self.steps, self.restarts, self.eot = loss, steps, restarts, check_eot(eot)
        self.name = f"apgd-{loss}"

    def run(self, forward, x, y, eps, generator):
        return apgd(
            classifier_objective(forward, y, self.loss),
            x,
            eps,
            self.norm,
            steps=self.steps,
            restarts=self.restarts,
            generator=generator,
            eot=self.eot,
        )
