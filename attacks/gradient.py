"""Our white-box attacks: PGD and APGD (cross-entropy or binary margin loss)."""

from __future__ import annotations

from robustsim.attacks.base import Attack
from robustsim.attacks.geometry import Norm
from robustsim.attacks.pgd import apgd, classifier_objective, pgd


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
        step_size: float = 2.5,
        schedule: str = "constant",
        loss: str = "margin",
    ) -> None:
        super().__init__(norm, seed)
        self.steps, self.restarts, self.step_size, self.schedule, self.loss = steps, restarts, step_size, schedule, loss

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
        )


class APGD(Attack):
    """APGD (Croce & Hein 2020) with loss ``ce`` or ``margin`` (binary DLR numerator)."""

    def __init__(
        self, norm: Norm = "l2", *, steps: int = 100, restarts: int = 1, seed: int = 0, loss: str = "ce"
    ) -> None:
        super().__init__(norm, seed)
        self.loss, self.steps, self.restarts = loss, steps, restarts
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
        )
