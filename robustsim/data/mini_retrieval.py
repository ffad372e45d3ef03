"""``mini`` retrieval: a deterministic, synthetic retrieval set from the photos ``mini:test`` uses.

Synthetic, not expert annotations. A *content* is a 64x64 window of a bundled test photo (windows
on a non-overlapping grid, nearly flat ones skipped). Each content gets four views: the window moved
by up to 2 px and distorted by a random ``mini`` family at strength 0.1-0.4. For the first
``QUERIES`` contents, view 0 is a query; the other views of every content (``CONTENTS`` in all, so
half of them are distractors) form the gallery, in a shuffled order. A query's positives are the
other views of its content; every other pair is a negative (fully annotated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustsim.cache import build_cached
from robustsim.data.distortions import FAMILIES
from robustsim.data.imageset import ArrayImages
from robustsim.data.mini import (
    SHIFT,
    SIZE,
    SPLIT_SOURCES,
    _shifted_view,
    manifest_hash,
    source_image,
)
from robustsim.data.retrieval import NEGATIVE, POSITIVE, PairLabels, RetrievalSet

RECIPE_VERSION = 1
CONTENTS, QUERIES, VIEWS = 160, 80, 4
MIN_STD = 12.0  # grey levels; flatter windows would be interchangeable contents
SEED = 2024


def _recipe() -> dict:
    return {
        "version": RECIPE_VERSION,
        "contents": CONTENTS,
        "queries": QUERIES,
        "views": VIEWS,
        "size": SIZE,
        "shift": SHIFT,
        "min_std": MIN_STD,
        "seed": SEED,
        "photos": SPLIT_SOURCES["test"],
        "families": sorted(FAMILIES),
    }


def _windows(photos: list[np.ndarray]) -> list[tuple[int, int, int]]:
    out = []
    for k, photo in enumerate(photos):
        h, w = photo.shape[:2]
        for y in range(SHIFT, h - SIZE - SHIFT + 1, SIZE):
            for x in range(SHIFT, w - SIZE - SHIFT + 1, SIZE):
                if photo[y : y + SIZE, x : x + SIZE].mean(2).std() >= MIN_STD:
                    out.append((k, y, x))
    return out


def generate() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries (Q, 3, S, S) uint8, gallery (G, 3, S, S) uint8, content id per gallery item (G,))."""
    rng = np.random.default_rng(SEED)
    photos = [source_image(n) for n in SPLIT_SOURCES["test"]]
    windows = _windows(photos)
    chosen = [windows[i] for i in rng.choice(len(windows), CONTENTS, replace=False)]
    families = sorted(FAMILIES)
    views = np.empty((CONTENTS, VIEWS, 3, SIZE, SIZE), dtype=np.uint8)
    for c, (k, y, x) in enumerate(chosen):
        for v in range(VIEWS):
            family = families[int(rng.integers(len(families)))]
            img = _shifted_view(photos[k], y, x, family, float(rng.uniform(0.1, 0.4)), rng)
            views[c, v] = img.transpose(2, 0, 1)
    queries = views[:QUERIES, 0]
    gallery = views[:, 1:].reshape(-1, 3, SIZE, SIZE)
    content = np.repeat(np.arange(CONTENTS), VIEWS - 1)
    order = rng.permutation(len(gallery))
    return np.ascontiguousarray(queries), np.ascontiguousarray(gallery[order]), content[order]


def _write(tmp: Path) -> dict:
    queries, gallery, content = generate()
    np.save(tmp / "queries.npy", queries)
    np.save(tmp / "gallery.npy", gallery)
    np.save(tmp / "content.npy", content)
    return {"recipe": _recipe(), "note": "synthetic: positives = other views of a content"}


def mini_retrieval(size: int | None = None) -> RetrievalSet:
    """The bundled retrieval set at ``size`` (None = 64 px), built on first use."""
    digest = manifest_hash(_recipe())
    root = build_cached("mini-retrieval", digest, _write)
    queries = np.load(root / "queries.npy", mmap_mode="r")
    gallery = np.load(root / "gallery.npy", mmap_mode="r")
    content = torch.from_numpy(np.load(root / "content.npy")).long()
    cols = (content < len(queries)).nonzero()[:, 0]  # gallery views of a query's content are its positives
    shape = (len(queries), len(gallery))
    labels = PairLabels(shape, NEGATIVE, content[cols], cols, torch.full((len(cols),), POSITIVE))
    return RetrievalSet(
        "mini-retrieval",
        ArrayImages(queries, size, "mini-retrieval:queries", f"mini-retrieval-q-{digest}"),
        ArrayImages(gallery, size, "mini-retrieval:gallery", f"mini-retrieval-g-{digest}"),
        labels,
        PairLabels(shape, False, [], [], [], torch.bool),
        "synthetic (bundled photos): positives are other distorted views of the query's window",
    )
