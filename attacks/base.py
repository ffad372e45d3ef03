"""Attack objects: ``attack(metric, data, eps=[...])`` returns results for every epsilon in one run.

The runner (:class:`~robustsim.attacks.sweep.Sweep`) feeds the 2AFC classifier batch by batch, attacks only
triplets still robust at the previous (smaller) epsilon (balls nest, so a break stays a break), and re-checks every
claimed adversarial independently: it must lie in the ball and the [0, 1] box and flip the decision, or it does not
count. Robust accuracy is over triplets with p != 0.5; ties count as wrong. A subclass writes only :meth:`run` (one
radius tensor) or :meth:`attack_batch` (every radius at once), like foolbox's attacks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import final

import torch

from robustsim.attacks.decision import Decision
from robustsim.attacks.geometry import Norm, rows_of
from robustsim.attacks.optim import restrict
from robustsim.attacks.sweep import AttackResult, Sweep
from robustsim.attacks.twoafc import CleanEmbeddings
from robustsim.ball import Ball, ball
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv
from robustsim.errors import InputError
from robustsim.metrics.base import Metric
from robustsim.metrics.smoothed import SmoothedMetric
from robustsim.precision import Precision, check_precision
from robustsim.resume import BatchStore
from robustsim.settings import AttackSettings
from robustsim.threat import ThreatModel

__all__ = ["Attack", "AttackResult"]


class Attack:
    """Base class. Subclasses implement :meth:`run` (one epsilon tensor) or :meth:`attack_batch`."""

    name = "attack"

    def __init__(self, norm: Norm = "l2", seed: int = 0, precision: Precision = "fp32") -> None:
        ball(norm)  # InputError for a norm robustsim has no ball for
        self.norm, self.seed = norm, seed
        self.precision = check_precision(precision)  # the steps' autocast; decisions and re-checks stay float32

    @property
    def ball(self) -> Ball:
        return ball(self.norm)

    def identity(self) -> str:
        """The attack and every setting its constructor set, as text: what keys its resumed batches."""
        settings = {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}
        return f"{self.name}|{settings}"

    @property
    def step_count(self) -> int | None:
        """The iterations the attack runs (None for one without a step count)."""
        steps = vars(self).get("steps")
        return steps if isinstance(steps, int) else None

    def with_steps(self, steps: int) -> Attack:
        """This attack running ``steps`` iterations, as a copy (the attack itself never changes); itself when it has
        no step count."""
        if self.step_count is None:
            return self
        other = copy.copy(self)
        vars(other)["steps"] = steps
        return other

    def radii_together(self) -> bool:
        """Whether :meth:`attack_batch` runs every radius in one go (overridden), so the runner makes one pass."""
        return type(self).attack_batch is not Attack.attack_batch

    def work(self) -> int:
        """Model calls one epsilon of one batch costs at most (roughly): what a progress bar counts (with the float32
        finish of a lower precision)."""
        budget = AttackSettings(int(getattr(self, "steps", 1)), int(getattr(self, "restarts", 1) or 1),
                                eot=int(getattr(self, "eot", 1)))  # fmt: skip
        return budget.passes()  # the float32 finish comes out of the same budget

    def run(
        self, forward, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack rows ``x`` (labels ``y``) within per-sample ``eps``; return (x_adv, claimed broken)."""
        raise NotImplementedError

    def attack_batch(
        self, forward, x: torch.Tensor, y: torch.Tensor, eps: list[float], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All epsilons (ascending) for one batch: (x_adv (n_eps, B, ...), claimed broken (n_eps, B)).

        x_adv holds each sample's break, else the attack's best (unverified) point for that epsilon."""
        adv = x.unsqueeze(0).repeat(len(eps), *[1] * x.dim())
        broken = torch.zeros(len(eps), x.shape[0], dtype=torch.bool, device=x.device)
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for i, e in enumerate(eps):
            if i > 0:  # nested balls: a break at a smaller radius is a break here
                adv[i], broken[i] = adv[i - 1], broken[i - 1]
            rows = alive.nonzero()[:, 0]
            if rows.numel() == 0 or e == 0:
                continue
            eps_t = torch.full((rows.numel(),), float(e), device=x.device)
            xa, b = self.run(restrict(forward, rows), x[rows], y[rows], eps_t, rows_of(generator, rows))
            adv[i, rows] = xa  # the break, else the attack's best point
            broken[i, rows[b]] = True
            alive[rows[b]] = False
        return adv, broken

    @final
    def __call__(
        self,
        metric: Metric | SmoothedMetric,
        data: TripletDataset,
        threat: ThreatModel | Sequence[float],
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: bool = True,
        n_examples: int = 4,
        workers: int | None = None,
        env: DistEnv | None = None,
        store: BatchStore | None = None,
        clean: CleanEmbeddings | None = None,
    ) -> AttackResult | None:
        """Attack every triplet at every radius of ``threat`` (a list of radii: this attack's norm, the reference
        moving). A :class:`SmoothedMetric` is attacked through one noise draw per model call (use ``eot`` to
        average them) and judged by its prediction: an abstention or a flip is not robust.
        Under torchrun each rank attacks its share and rank 0 gets the whole result (others None).
        ``store`` keeps every finished batch (its results, model calls and examples), so an interrupted run
        continues where it stopped (:mod:`robustsim.resume`). ``clean`` shares the clean embeddings between the
        attacks of one run (:class:`~robustsim.attacks.twoafc.CleanEmbeddings`)."""
        threat = ThreatModel(self.norm, "ref", tuple(threat)) if not isinstance(threat, ThreatModel) else threat
        if threat.norm != self.norm:
            raise InputError(f"{self.name} attacks {self.norm} balls, not {threat.norm}: make_attack(name, threat)")
        sweep = Sweep(self, Decision.of(metric, threat), threat, n_examples, store, clean)
        return sweep.over(data, batch_size, device, workers, env, progress)
