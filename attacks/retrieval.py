"""Attacks on retrieval: the retrieval goal as 2-class logits, so every 2AFC attack applies unchanged.

The attacker perturbs the query within an l2 / linf ball (and the [0, 1] box); the gallery is fixed.
Label 1 means "the ranking is still as the defender wants"; ``margin(logits, 1) <= 0`` is a break.

- untargeted (:class:`PushOut`): logits (k-th best non-positive similarity, best positive similarity).
  Some positive is in the top k iff the best positive beats the k-th best non-positive, so a break
  pushes every annotated positive out of the top k.
- targeted (:class:`PullIn`): logits (target similarity, best other similarity); a break makes the
  chosen item the top-1.

:func:`attack_queries` runs any :class:`~robustsim.attacks.base.Attack` (PGD, APGD, ...) on these
logits for all epsilons in one run; callers re-check the real ranking of what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robustsim.attacks.base import Attack

_FLOOR = -1e9  # stands in for -inf so losses and gradients stay finite


class _RetrievalLogits:
    def __init__(self, similarity, exclude: torch.Tensor) -> None:
        self.similarity, self.exclude = similarity, exclude

    def scores(self, xa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.similarity(xa).masked_fill(self.exclude[rows], _FLOOR)


class PushOut(_RetrievalLogits):
    """Untargeted: push every positive (B, G) bool out of the top ``k``."""

    def __init__(self, similarity, positives: torch.Tensor, exclude: torch.Tensor, k: int) -> None:
        super().__init__(similarity, exclude)
        self.positives, self.k = positives, k

    def __call__(self, xa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        s, pos = self.scores(xa, rows), self.positives[rows]
        best_pos = s.masked_fill(~pos, _FLOOR).amax(1)
        kth_other = s.masked_fill(pos, _FLOOR).topk(self.k, dim=1).values[:, -1]
        return torch.stack([kth_other, best_pos], dim=1)


class PullIn(_RetrievalLogits):
    """Targeted: make item ``target`` (B,) the top-1."""

    def __init__(self, similarity, target: torch.Tensor, exclude: torch.Tensor) -> None:
        super().__init__(similarity, exclude)
        self.target = target

    def __call__(self, xa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        s, t = self.scores(xa, rows), self.target[rows]
        s_t = s.gather(1, t[:, None])[:, 0]
        best_other = s.scatter(1, t[:, None], _FLOOR).amax(1)
        return torch.stack([s_t, best_other], dim=1)


def attack_queries(
    attack: Attack, goal: PushOut | PullIn, q: torch.Tensor, eps: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """(n_eps, B, 3, H, W) perturbed queries, one per epsilon (ascending), each in its ball and the box.

    Queries the attack did not break come back as the attack's best point (or unchanged)."""
    y = torch.ones(q.shape[0], dtype=torch.long, device=q.device)
    adv, _ = attack.attack_batch(goal, q, y, sorted(float(e) for e in eps), generator)
    return adv
