"""On-disk cache of unit-normalised embeddings, keyed by every byte of the metric's state and the images."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robustsim.cache import file_sha256, verified_file
from robustsim.data.imageset import ImageSet
from robustsim.errors import DataError
from robustsim.io import write_json
from robustsim.metrics.base import EmbeddingMetric


def embedding_key(metric: EmbeddingMetric, images: ImageSet) -> str:
    """Hash of the metric's name, all its weights and buffers (every byte) and the images' identity."""
    h = hashlib.sha256(f"{metric.name}|{images.identity}".encode())
    for name, t in metric.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def cached_embeddings(
    metric: EmbeddingMetric,
    images: ImageSet,
    cache_dir: str | os.PathLike,
    prefix: str = "emb",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """(N, D) unit-norm embeddings of ``images`` as a read-only memory map; computed on the first call
    only, written atomically (a crash never leaves a partial cache file). A cached file is used only
    while it hashes to the sha256 recorded beside it; an edited, truncated or empty one is recomputed."""
    cache_dir = Path(cache_dir)
    key = embedding_key(metric, images)
    path = cache_dir / f"{prefix}-{key}.npy"
    sidecar = cache_dir / f"{prefix}-{key}.json"
    cached = _verified(path, sidecar, len(images))
    if cached is not None:
        return cached
    if path.exists():
        print(f"robustsim: cache file {path} failed verification; recomputing it", file=sys.stderr)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create cache folder {cache_dir} ({err.strerror}); set ROBUSTSIM_CACHE") from None
    if progress:
        print(
            f"robustsim: computing {prefix} embeddings of {len(images)} images with {metric.name} (cached once)",
            file=sys.stderr,
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    out = None
    try:
        for start in tqdm(
            range(0, len(images), batch_size), desc=f"{prefix} {metric.name}", disable=not progress, leave=False
        ):
            x = torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]).to(device)
            e = F.normalize(metric.embed(x).float(), dim=1).cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), e.shape[1]))
            out[start : start + len(e)] = e
        assert out is not None
        out.flush()
        shape = list(out.shape)
        del out
        meta = {"metric": metric.name, "images": images.identity, "shape": shape, "sha256": file_sha256(tmp)}
        write_json(sidecar, meta)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")


def _verified(path: Path, sidecar: Path, n: int) -> np.ndarray | None:
    """The cached array when the file matches its sidecar's sha256 and shape, else None."""
    try:
        meta = json.loads(sidecar.read_text())
        if not verified_file(path, str(meta["sha256"])):
            return None
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return arr if arr.ndim == 2 and arr.shape[0] == n and list(arr.shape) == meta.get("shape") else None
