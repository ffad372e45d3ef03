"""Distillation teachers and their on-disk embedding cache.

A teacher is any embedding Metric of the zoo, or an ``a+b+c`` ensemble (the DreamSim recipe:
concatenated, mean-centred, unit-normalised member embeddings; centres fitted on the training
images). Targets are the unit-normalised teacher embeddings of the un-augmented images, computed
once per (teacher, image set) and kept as a memory-mapped float32 ``.npy`` file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robustsim.data.imageset import ImageSet
from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.ensemble import EnsembleMetric
from robustsim.metrics.registry import load_metric

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


def _teacher_key(teacher: EmbeddingMetric, images: ImageSet) -> str:
    h = hashlib.sha256(f"{teacher.name}|{images.identity}".encode())
    for name, t in teacher.state_dict().items():  # all weights and fitted centres, every byte
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def teacher_targets(
    teacher: EmbeddingMetric,
    images: ImageSet,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """(N, D) unit-norm teacher embeddings, read-only memory map; computed on the first call only."""
    cache_dir = Path(cache_dir)
    key = _teacher_key(teacher, images)
    path = cache_dir / f"teacher-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    out = None
    try:
        for start in tqdm(
            range(0, len(images), batch_size), desc=f"teacher {teacher.name}", disable=not progress, leave=False
        ):
            x = torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]).to(device)
            e = F.normalize(teacher.embed(x).float(), dim=1).cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), e.shape[1]))
            out[start : start + len(e)] = e
        assert out is not None
        out.flush()
        del out
        os.replace(tmp, path)
        meta = {"teacher": teacher.name, "images": images.identity, "shape": list(np.load(path, mmap_mode="r").shape)}
        (cache_dir / f"teacher-{key}.json").write_text(json.dumps(meta))
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")
