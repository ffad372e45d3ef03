"""Projected gradient ascent (PGD) and APGD (Croce & Hein 2020) with per-sample radii.

Both maximise an ``objective(x_adv, rows) -> (loss (B,), done (B,))``: ``rows`` index the samples
still being attacked (early-stopped ones drop out of the batch) and ``done`` marks samples whose
goal is reached. Every iterate stays inside the ball and the [0, 1] box; the result is the best
point per sample (the first that is done, else the one with the highest loss).
:func:`classifier_objective` turns the 2AFC classifier into such an objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustsim.attacks.geometry import Norm, RowNoise, ascent_direction, project, random_start, rows_of
from robustsim.attacks.losses import LOSSES
from robustsim.attacks.twoafc import margin
from robustsim.settings import STEP_SIZE

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


Confirm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, rows) -> (B,) bool: the decision is wrong


@dataclass(frozen=True)
class Checked:
    """A call on rows of the batch (a forward or an objective) with the decision that judges its points: ``confirm``
    (a smoothed metric's prediction, the re-check every break must pass)."""

    call: Callable
    confirm: Confirm

    def __call__(self, x: torch.Tensor, rows: torch.Tensor):
        return self.call(x, rows)


def confirm_of(call: Callable) -> Confirm | None:
    """The re-check a :class:`Checked` call carries; None for a plain one."""
    return call.confirm if isinstance(call, Checked) else None


def restrict(forward: Forward, idx: torch.Tensor) -> Forward:
    """``forward`` on the rows ``idx`` of its batch (row r of the view is row idx[r]), its ``confirm`` too."""

    def sub(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return forward(x, idx[rows])

    confirm = confirm_of(forward)
    return sub if confirm is None else Checked(sub, lambda x, rows: confirm(x, idx[rows]))


def classifier_objective(forward: Forward, y: torch.Tensor, loss: str) -> Objective:
    """Maximise ``loss`` of the logits; done when the decision is no longer correct (margin <= 0). A forward with a
    ``confirm(x, rows)`` (a smoothed metric's decision: the re-check every break must pass) makes a row done only
    when that decision is wrong too: a randomised draw that flips does not stop the attack."""

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = forward(x, rows)
        return LOSSES[loss](logits, y[rows]), margin(logits, y[rows]) <= 0

    confirm = confirm_of(forward)
    return objective if confirm is None else Checked(objective, confirm)


@dataclass
class _Best:
    x: torch.Tensor
    loss: torch.Tensor
    broken: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> _Best:
        """Nothing found yet: the clean points, loss -inf, none broken."""
        n = x.shape[0]
        return cls(
            x.clone(),
            torch.full((n,), -math.inf, device=x.device, dtype=x.dtype),
            torch.zeros(n, dtype=torch.bool, device=x.device),
        )

    def update(self, rows: torch.Tensor, x: torch.Tensor, loss: torch.Tensor, broken: torch.Tensor) -> None:
        """Keep, for each row, its first break, else its highest loss (masks stay on the device: no host sync)."""
        was = self.broken[rows]
        better = (loss > self.loss[rows]) & ~was | (broken & ~was)
        view = better.view(-1, *[1] * (x.dim() - 1))
        self.x.index_copy_(0, rows, torch.where(view, x.detach().to(self.x.dtype), self.x[rows]))
        self.loss.index_copy_(0, rows, torch.where(better, loss.detach().to(self.loss.dtype), self.loss[rows]))
        self.broken.index_copy_(0, rows, was | (broken & better))


def _standing(broken: torch.Tensor) -> torch.Tensor:
    """Indices of the rows not yet broken: the one host synchronisation of an attack step."""
    return (~broken).nonzero()[:, 0]


def _loss_grad(objective: Objective, x: torch.Tensor, rows: torch.Tensor, eot: int = 1):
    """(loss, gradient, done) at ``x``; with ``eot`` > 1 (Expectation over Transformation, Athalye et al. 2018)
    the loss and gradient are means over ``eot`` evaluations of a randomised objective, each drawing its own
    randomness, and a sample is a candidate when most of the draws say so. A candidate is done only when the
    objective's ``confirm`` (the decision that judges the point: a smoothed metric's prediction) agrees."""
    x = x.detach().requires_grad_(True)
    loss_sum, grad_sum, votes = None, None, None
    for _ in range(eot):
        loss, done = objective(x, rows)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        grad_sum = grad if grad_sum is None else grad_sum + grad
        votes = done.long() if votes is None else votes + done.long()
    assert loss_sum is not None and grad_sum is not None and votes is not None
    done = 2 * votes > eot
    confirm = confirm_of(objective)
    if confirm is not None:
        candidates = done.nonzero()[:, 0]
        done = torch.zeros_like(done)
        if candidates.numel():
            with torch.no_grad():
                done[candidates] = confirm(x.detach()[candidates], rows[candidates]).to(done.device)
    return loss_sum / eot, grad_sum / eot, done


def pgd(
    objective: Objective,
    x: torch.Tensor,
    eps: torch.Tensor,
    norm: Norm,
    steps: int = 50,
    restarts: int = 1,
    step_size: float = STEP_SIZE,
    schedule: str = "constant",
    random_init: bool = True,
    generator: torch.Generator | RowNoise | None = None,
    eot: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD with step ``step_size * eps / steps`` (``schedule`` constant or cosine), random start,
    restarts and per-sample early stopping; ``eot`` gradient draws per step (see :func:`_loss_grad`).
    Returns (x_adv, broken)."""
    generator = generator or torch.Generator().manual_seed(0)
    eps = eps.to(x.dtype)  # float64 radii (certificates) must not promote the iterates
    best = _Best.start(x)
    for r in range(restarts):
        rows = (~best.broken).nonzero()[:, 0]
        if rows.numel() == 0:
            break
        x0, e = x[rows], eps[rows]
        xa = random_start(x0, e, norm, rows_of(generator, rows)) if (random_init or r > 0) else x0.clone()
        for t in range(steps + 1):
            lval, grad, broken = _loss_grad(objective, xa, rows, eot)
            best.update(rows, xa, lval, broken)
            if t == steps:
                break
            keep = _standing(broken)
            if keep.numel() == 0:
                break
            if keep.numel() < broken.numel():
                rows, xa, grad, x0, e = rows[keep], xa[keep], grad[keep], x0[keep], e[keep]
            factor = 0.5 * (1 + math.cos(math.pi * t / steps)) if schedule == "cosine" else 1.0
            alpha = step_size * e * factor / steps
            xa = project(xa + alpha.view(-1, *[1] * (x.dim() - 1)) * ascent_direction(grad, norm), x0, e, norm)
    return best.x, best.broken


def check_schedule(steps: int) -> dict[int, int]:
    """Steps (1-based) after which APGD checks its step size, with the window each check looks back on.

    Croce & Hein's schedule as pyautoattack implements it: the first check after max(0.22 n, 1) steps,
    each later window shorter by max(0.03 n, 1) down to max(0.06 n, 1) (all rounded down), so short runs
    check often near their end."""
    window, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = {}, 0
    while at + window <= steps:
        at += window
        out[at] = window
        window = max(window - shrink, shortest)
    return out


def apgd(
    objective: Objective,
    x: torch.Tensor,
    eps: torch.Tensor,
    norm: Norm,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | RowNoise | None = None,
    eot: int = 1,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Auto-PGD (Croce & Hein 2020): step size 2 eps, momentum 0.75, and at each check of
    :func:`check_schedule` the step halves (and the iterate returns to the best point) for samples whose
    loss rose in at most ``rho`` of the window's steps, or that were not halved at the previous check
    and have not improved since. Samples stop as soon as their goal is reached; restarts begin anew from
    random points for the samples still standing; ``eot`` gradient draws per step (AutoAttack's rand version
    uses 20). ``start``: the first restart's points (projected into the ball; e.g. another attack's best), instead of
    random ones. Returns (x_adv, broken)."""
    generator = generator or torch.Generator().manual_seed(0)
    eps = eps.to(x.dtype)
    shape = (-1, *[1] * (x.dim() - 1))
    best = _Best.start(x)
    checks = check_schedule(steps)
    for restart in range(restarts):
        rows = (~best.broken).nonzero()[:, 0]
        if rows.numel() == 0:
            break
        x0, e = x[rows], eps[rows]
        if start is not None and restart == 0:
            xk = project(start[rows].to(x.dtype), x0, e, norm)
        else:
            xk = random_start(x0, e, norm, rows_of(generator, rows))
        lk, gk, broken = _loss_grad(objective, xk, rows, eot)
        best.update(rows, xk, lk, broken)
        eta = 2 * e
        xmax, lmax, gmax = xk.clone(), lk.clone(), gk.clone()
        lmax_at_check = lmax.clone()
        halved_last = torch.ones_like(lk, dtype=torch.bool)
        increases = torch.zeros_like(lk)
        x_prev = xk.clone()
        for k in range(1, steps + 1):
            keep = _standing(broken)
            if keep.numel() == 0:
                break
            if keep.numel() < broken.numel():  # early stop: finished samples leave the batch
                rows, x0, e, eta, xk, lk, gk, x_prev = (t[keep] for t in (rows, x0, e, eta, xk, lk, gk, x_prev))
                xmax, lmax, gmax, increases = xmax[keep], lmax[keep], gmax[keep], increases[keep]
                lmax_at_check, halved_last = lmax_at_check[keep], halved_last[keep]
            z = project(xk + eta.view(shape) * ascent_direction(gk, norm), x0, e, norm)
            a = momentum if k > 1 else 1.0
            x_new = project(xk + a * (z - xk) + (1 - a) * (xk - x_prev), x0, e, norm)
            l_new, g_new, broken = _loss_grad(objective, x_new, rows, eot)
            best.update(rows, x_new, l_new, broken)
            increases += (l_new > lk).to(increases.dtype)
            improved = l_new > lmax
            xmax = torch.where(improved.view(shape), x_new, xmax)
            lmax, gmax = torch.where(improved, l_new, lmax), torch.where(improved.view(shape), g_new, gmax)
            x_prev, xk, lk, gk = xk, x_new, l_new, g_new
            if k in checks:
                stall = (increases <= rho * checks[k]) | (~halved_last & (lmax <= lmax_at_check))
                eta = torch.where(stall, eta / 2, eta)
                xk = torch.where(stall.view(shape), xmax, xk)
                gk = torch.where(stall.view(shape), gmax, gk)
                increases.zero_()
                lmax_at_check, halved_last = lmax.clone(), stall
    return best.x, best.broken
