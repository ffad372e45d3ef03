"""Distillation (LipSim stage 1): a 1-Lipschitz student regresses a teacher's unit-norm embeddings.

Two augmented student views per image, per-sample RMSE to the teacher embedding of the clean
image (averaged over samples, so multi-process averaging is exact), Adam betas (0.5, 0.9), cosine
schedule with warm-up. Teacher embeddings come from the on-disk cache (:mod:`.teacher`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from robustsim.data.imageset import ImageSet
from robustsim.models.lipsim import LipSimMetric
from robustsim.train.augment import augment


class _Indexed(Dataset):
    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], i


def rmse(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the per-sample root-mean-square error over embedding dimensions."""
    return (student - target).pow(2).mean(dim=1).add(1e-12).sqrt().mean()


@torch.no_grad()
def embedding_rmse(metric: LipSimMetric, images: ImageSet, targets: np.ndarray, batch_size: int = 128) -> float:
    """RMSE of the student's embeddings of clean ``images`` to ``targets`` (held-out check)."""
    errs = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        x = torch.stack([images[i] for i in range(start, stop)]).to(metric.device)
        t = torch.from_numpy(np.array(targets[start:stop])).to(x)
        errs.append((metric._embed(x) - t).pow(2).mean(dim=1).sqrt())
    return float(torch.cat(errs).mean())


@dataclass
class DistillTask:
    """The distillation recipe as a :class:`~robustsim.train.loop.Task`."""

    images: ImageSet
    targets: np.ndarray
    val_images: ImageSet | None
    val_targets: np.ndarray | None
    meta: dict[str, Any]
    evaluate_2afc: Any = None  # callable(metric) -> dict, extra validation figures
    name: str = "distill"

    def __post_init__(self) -> None:
        self.dataset = _Indexed(self.images)

    def loss(self, model: nn.Module, batch: Any, gen: torch.Generator, rows: slice, total: int) -> torch.Tensor:
        x, idx = batch
        device = next(model.parameters()).device
        x = x.to(device)
        target = torch.from_numpy(np.array(self.targets[idx.numpy()])).to(x)
        views = torch.cat([augment(x, gen, rows, total), augment(x, gen, rows, total)])
        return rmse(model(views), torch.cat([target, target]))

    def evaluate(self, metric: LipSimMetric) -> tuple[dict[str, float], float]:
        figures: dict[str, float] = {}
        if self.val_images is not None and self.val_targets is not None:
            figures["val_rmse"] = embedding_rmse(metric, self.val_images, self.val_targets)
        if self.evaluate_2afc is not None:
            figures.update(self.evaluate_2afc(metric))
        score = -figures["val_rmse"] if "val_rmse" in figures else figures.get("clean", 0.0)
        return figures, score
