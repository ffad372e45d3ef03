"""Third-party attacks on exactly our 2AFC threat model: AutoAttack (pyautoattack) and foolbox 3.

AutoAttack calls the model on shrinking subsets of the batch, so the model cannot assume which
triplet a row belongs to. ``RowMatcher`` recovers it: a query q is assigned to the nearest clean
input c_i only when ||q - c_i|| < min_j ||c_i - c_j|| / 2, which by the triangle inequality makes
c_i the unique answer. Rows are grouped so clean inputs are more than 2 eps apart (every point of
an eps ball then matches); a query outside that zone (FAB explores beyond the ball) raises
``AmbiguousQuery`` and the group is re-run with one AutoAttack call per triplet.
AutoAttack's DLR losses need >= 3 classes; with 2 classes the targeted and untargeted attacks
coincide and DLR's numerator is the binary margin, which replaces them (``n_target_classes = 1``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from robustsim.attacks.base import Attack
from robustsim.attacks.geometry import Norm, norms
from robustsim.attacks.twoafc import margin
from robustsim.ball import ball
from robustsim.precision import Precision


class AmbiguousQuery(RuntimeError):
    """A queried point cannot be attributed to one triplet with certainty."""


def _pairwise(a: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    """(A, B) l2 or linf distances between rows, without an A x B x pixels intermediate."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double(), p=ball(norm).p)


class RowMatcher(nn.Module):
    """A batch-agnostic classifier: maps any subset of perturbed rows back to their triplets."""

    def __init__(self, forward, clean: torch.Tensor, norm: Norm) -> None:
        super().__init__()
        self.fwd, self.clean, self.norm = forward, clean, norm
        with torch.no_grad():
            sep = _pairwise(clean, clean, norm).fill_diagonal_(float("inf"))
        self.half_sep = sep.min(dim=1).values / 2

    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            best, rows = _pairwise(x.detach(), self.clean, self.norm).min(dim=1)
        if bool((best >= self.half_sep[rows]).any()):
            raise AmbiguousQuery("a queried point is not closer to one triplet than half the gap to the others")
        return rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fwd(x, self.rows_of(x))


def separable_groups(x: torch.Tensor, eps: float, norm: Norm) -> list[torch.Tensor]:
    """Split rows into groups whose clean inputs are pairwise more than 2 eps apart (greedy)."""
    flat = x.flatten(1)
    groups: list[list[int]] = []
    for i in range(x.shape[0]):
        for g in groups:
            d = norms(flat[g] - flat[i], norm)
            if bool((d > 2 * eps * (1 + 1e-3) + 1e-6).all()):
                g.append(i)
                break
        else:
            groups.append([i])
    return [torch.tensor(g, device=x.device) for g in groups]


_QUIET = logging.getLogger("robustsim.autoattack")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def _binary_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -margin(logits, y).to(logits.dtype)


def _set_iterations(apgd, n_iter: int) -> None:
    """Give a pyautoattack APGD object ``n_iter`` iterations *and* the checkpoint schedule that goes with
    them (set after construction, ``n_iter`` alone keeps the 100-iteration schedule, so with 20 steps the
    step size never halves). The schedule is copied from a fresh object built with ``n_iter``."""
    fresh = type(apgd)(apgd.model, n_iter=n_iter, eps=apgd.eps, norm=apgd.norm, device=apgd.device)
    for name in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        setattr(apgd, name, getattr(fresh, name))


class AutoAttack(Attack):
    """The AutoAttack ensemble through ``pyautoattack`` on the 2AFC classifier.

    ``version='standard'`` runs apgd-ce, apgd-t (binary margin), fab-t and square; ``'custom'`` with
    ``attacks=[...]`` picks a subset. ``steps`` (iterations of apgd and fab) and ``n_queries`` (Square; default
    5000 in the standard ensemble, max(steps, 100) alone) size it for a CPU; ``restarts`` None keeps
    pyautoattack's own.
    """

    name = "autoattack"

    def __init__(
        self,
        norm: Norm = "l2",
        *,
        steps: int = 100,
        restarts: int | None = None,
        seed: int = 0,
        version: str = "standard",
        attacks: list[str] | None = None,
        n_queries: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        super().__init__(norm, seed, precision)
        self.version, self.attacks, self.n_iter = version, attacks, steps
        self.n_queries = n_queries if n_queries is not None else 5000 if version == "standard" else max(steps, 100)
        self.restarts = restarts

    def work(self) -> int:
        names = self.attacks if self.version == "custom" and self.attacks else ["apgd-ce", "apgd-t", "fab-t", "square"]
        per = {"square": self.n_queries}
        return sum(per.get(n, self.n_iter * (self.restarts or 1)) for n in names) + 1

    def _build(self, model: nn.Module, eps: float, device: torch.device):
        from pyautoattack import AutoAttack as _AA

        kw = {"attacks": self.attacks} if self.version == "custom" else {}
        aa = _AA(
            model,
            norm=ball(self.norm).foolbox,
            eps=eps,
            version=self.version,
            seed=self.seed,
            device=device,
            **kw,
        )
        aa.verbose = False
        aa.logger = _QUIET  # its "2 classes: no DLR" warning is expected: DLR is replaced below
        aa.apgd.dlr_loss = _binary_margin
        aa.apgd_targeted.dlr_loss_targeted = _binary_margin
        aa.apgd_targeted.n_target_classes = 1
        aa.fab.n_target_classes = 1
        for apgd in (aa.apgd, aa.apgd_targeted):  # the step-size checkpoints follow the iteration count
            _set_iterations(apgd, self.n_iter)
        aa.fab.n_iter = self.n_iter
        aa.square.n_queries = self.n_queries
        if self.restarts is not None:  # 'custom' otherwise keeps 5 restarts for apgd and fab
            aa.apgd.n_restarts = aa.fab.n_restarts = self.restarts
        return aa

    def _run_group(self, forward, x, y, rows: torch.Tensor, eps: float) -> torch.Tensor:
        model = RowMatcher(lambda xa, r: forward(xa, rows[r]), x[rows], self.norm)
        aa = self._build(model, eps, x.device)
        x_adv, _ = aa.run_standard_evaluation(x[rows], y[rows], batch_size=rows.numel())
        return x_adv

    def run(self, forward, x, y, eps, generator):
        e = float(eps.max())
        x_adv = x.clone()
        for group in separable_groups(x, e, self.norm):
            try:
                x_adv[group] = self._run_group(forward, x, y, group, e)
            except AmbiguousQuery:
                for i in group:
                    x_adv[i : i + 1] = self._run_group(forward, x, y, i.view(1), e)
        with torch.no_grad():
            broken = margin(forward(x_adv, torch.arange(x.shape[0], device=x.device)), y) <= 0
        return x_adv, broken


class FoolboxAttack(Attack):
    """Any foolbox 3 attack (e.g. ``foolbox.attacks.L2PGD()``): every epsilon in one foolbox call (foolbox
    itself re-runs the attack per epsilon)."""

    def __init__(self, attack, norm: Norm = "l2", *, seed: int = 0, precision: Precision = "fp32") -> None:
        super().__init__(norm, seed, precision)
        self.fb_attack = attack
        self.name = f"foolbox-{type(attack).__name__}"

    def attack_batch(self, forward, x, y, eps, generator):
        import foolbox as fb

        rows = torch.arange(x.shape[0], device=x.device)

        class _Model(nn.Module):
            def forward(self, xa: torch.Tensor) -> torch.Tensor:
                return forward(xa, rows)

        torch.manual_seed(self.seed)  # foolbox's random starts use the global generator
        fmodel = fb.PyTorchModel(_Model().eval(), bounds=(0, 1), device=x.device)
        _, clipped, success = self.fb_attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=list(eps))
        return torch.stack([c.detach() for c in clipped]), success
