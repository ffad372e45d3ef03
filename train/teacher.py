"""Distillation teachers and their on-disk embedding cache.

A teacher is any embedding Metric of the zoo, or an ``a+b+c`` ensemble (the DreamSim recipe:
concatenated, mean-centred, unit-normalised member embeddings; centres fitted on the training
images). Targets are the unit-normalised teacher embeddings of the un-augmented images, computed
once per (teacher, image set) and kept as a memory-mapped float32 ``.npy`` file.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from robustsim.data.imageset import ImageSet
from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.embedding_cache import cached_embeddings
from robustsim.metrics.ensemble import EnsembleMetric
from robustsim.zoo import load_metric

CENTRE_IMAGES = 256


def load_teacher(spec: str, images: ImageSet, device: torch.device | str = "cpu") -> EmbeddingMetric:
    """Load ``spec`` as an embedding metric; an ensemble gets its centres fitted on ``images``."""
    teacher = load_metric(spec, device=device)
    if not isinstance(teacher, EmbeddingMetric):
        raise RobustsimError(f"teacher {spec!r} has no embed(); use an embedding metric such as effnet-ensemble")
    if isinstance(teacher, EnsembleMetric):
        n = min(CENTRE_IMAGES, len(images))
        idx = np.linspace(0, len(images) - 1, n).round().astype(int)
        teacher.fit_centers(torch.stack([images[int(i)] for i in idx]).to(device))
    return teacher.eval().requires_grad_(False)


def teacher_targets(
    teacher: EmbeddingMetric,
    images: ImageSet,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """(N, D) unit-norm teacher embeddings, read-only memory map; computed on the first call only."""
    return cached_embeddings(teacher, images, cache_dir, "teacher", batch_size, device, progress)
