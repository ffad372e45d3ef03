"""Attack losses on 2-class logits (maximised by the attacker)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustsim.attacks.twoafc import margin

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (= softplus(-margin) for 2 classes)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary margin z_{1-y} - z_y (the DLR numerator for 2 classes, no rescaling needed)."""
    return -margin(logits, y).to(logits.dtype)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss}
