"""The gallery side of retrieval: similarities of queries to every gallery item, and top-k search.

Similarity is ``-d(query, item)`` for every metric, so higher is closer. An embedding metric's
gallery is its cached unit-norm embeddings (:func:`robustsim.metrics.embedding_cache.cached_embeddings`);
then ``-d = cos - 1`` is one matrix product, and top-k search runs either exactly, by chunked
matrix products, or with a ``faiss`` inner-product index (``IndexFlatIP``, also exact). Any other
metric keeps the gallery images and evaluates ``metric.pairwise`` (d on every pair); the l2 metric keeps
the gallery's squared norms too, so its distances are one ``addmm``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from robustsim.certify.adaptive import adaptive_search
from robustsim.certify.rounding import is_adaptive
from robustsim.data.imageset import ImageSet
from robustsim.errors import InputError, RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric

Backend = Literal["auto", "exact", "faiss"]
BACKENDS: tuple[str, ...] = ("auto", "exact", "faiss")
FAISS_FROM = 50_000  # gallery size from which "auto" uses faiss


def exact_search(q: torch.Tensor, g: torch.Tensor, k: int, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner products of rows of ``q`` (B, D) with rows of ``g`` (G, D), best first;
    the gallery is scanned in chunks, so memory stays O(B * (k + chunk))."""
    k = min(k, g.shape[0])
    best_s = torch.empty(q.shape[0], 0, dtype=q.dtype, device=q.device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
    for start in range(0, g.shape[0], chunk):
        s = q @ g[start : start + chunk].T
        idx = torch.arange(start, start + s.shape[1], device=q.device).expand_as(s)
        s, idx = torch.cat([best_s, s], 1), torch.cat([best_i, idx], 1)
        best_s, pos = s.topk(min(k, s.shape[1]), dim=1)
        best_i = idx.gather(1, pos)
    return best_s, best_i


def faiss_search(q: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as :func:`exact_search` through ``faiss.IndexFlatIP`` (exact inner-product search)."""
    try:
        import faiss
    except ImportError as err:
        raise RobustsimError("faiss is not installed; pip install faiss-cpu, or use --index exact") from err
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g.detach().cpu().float().numpy()))
    s, i = index.search(np.ascontiguousarray(q.detach().cpu().float().numpy()), min(k, g.shape[0]))
    return torch.from_numpy(s).to(q.device), torch.from_numpy(i).long().to(q.device)


class Gallery:
    """Similarities ``-d(q, item)`` of a query batch to every gallery item."""

    metric: Metric

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """(B, G) similarities of [0, 1] query images ``q``; differentiable in ``q`` (what attacks use)."""
        raise NotImplementedError

    def exact(self, q: torch.Tensor) -> torch.Tensor:
        """(B, G) similarities as the metric itself computes them (what rankings and scores use)."""
        return self.similarity(q)

    def search(self, q: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (similarities, indices) per query, best first, never an ``exclude``d (B, G) item."""
        with torch.no_grad():
            s = self.exact(q)
        if exclude is not None:
            s = s.masked_fill(exclude, -torch.inf)
        return s.topk(min(k, s.shape[1]), dim=1)


class EmbeddingGallery(Gallery):
    """Unit-norm gallery embeddings ``phi`` (G, D) of an embedding metric."""

    def __init__(self, metric: EmbeddingMetric, phi: torch.Tensor, backend: Backend = "auto") -> None:
        if backend not in ("auto", "exact", "faiss"):
            raise InputError(f"backend must be auto, exact or faiss, got {backend!r}")
        self.metric, self.phi, self.backend = metric, phi, backend

    def __len__(self) -> int:
        return self.phi.shape[0]

    def query_phi(self, q: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.metric._embed(q), dim=1, eps=1e-12)

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        qp = self.query_phi(q)
        return qp @ self.phi.to(qp.dtype).T - 1.0  # a float64 metric ranks the stored directions in float64

    def search(self, q: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` as the deployed metric ranks them: an adaptive metric's exact ranking
        (:func:`~robustsim.certify.adaptive.adaptive_search`), else its own float32 search."""
        if is_adaptive(self.metric):
            s, i = adaptive_search(self.metric, self.metric.as_input(q), self.phi, k, exclude)
            return s.to(self.phi.dtype) - 1.0, i
        with torch.no_grad():
            qp = self.query_phi(q)
        extra = int(exclude.sum(1).max()) if exclude is not None and exclude.numel() else 0
        use_faiss = self.backend == "faiss" or (self.backend == "auto" and len(self) >= FAISS_FROM and _has_faiss())
        s, i = (faiss_search if use_faiss else exact_search)(qp, self.phi.to(qp.dtype), k + extra)
        if extra:
            assert exclude is not None  # extra > 0 only with an exclusion mask
            s = s.masked_fill(exclude.gather(1, i), -torch.inf)
            s, pos = s.topk(min(k, s.shape[1]), dim=1)
            i = i.gather(1, pos)
        return s - 1.0, i


class PairwiseGallery(Gallery):
    """Gallery images (G, 3, H, W) for a metric without embeddings: ``metric.pairwise`` on every pair."""

    def __init__(self, metric: Metric, images: torch.Tensor) -> None:
        self.metric, self.images = metric, images

    def __len__(self) -> int:
        return self.images.shape[0]

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        return -self.metric.pairwise(q, self.images)


class SquaredL2Gallery(Gallery):
    """The l2 metric (mean squared pixel difference) on a fixed gallery: the gallery's squared norms are
    computed once, so an attack step costs one ``addmm``: d = (|q|^2 + |g|^2 - 2 q.g) / P, clamped at 0.
    That form rounds differently from the metric's own (exact ties may split), so rankings and scores
    (:meth:`exact`) use the metric's own distances; every attack result is re-ranked with them."""

    def __init__(self, metric: Metric, images: torch.Tensor) -> None:
        self.metric, self.images = metric, images
        self.flat = images.flatten(1)
        self.sq = self.flat.pow(2).sum(1)
        self.scale = 1.0 / self.flat.shape[1]

    def __len__(self) -> int:
        return self.flat.shape[0]

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        qf = q.flatten(1)
        if qf.shape[1] != self.flat.shape[1]:
            raise RobustsimError(f"query images have {qf.shape[1]} values, gallery images {self.flat.shape[1]}")
        d = torch.addmm(qf.pow(2).sum(1, keepdim=True) + self.sq, qf, self.flat.T, alpha=-2.0)
        return -(d.clamp_min(0.0) * self.scale)

    def exact(self, q: torch.Tensor) -> torch.Tensor:
        return -self.metric.pairwise(q, self.images)


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _stack(images: ImageSet) -> torch.Tensor:
    return torch.stack([images[i] for i in range(len(images))])


def build_gallery(
    metric: Metric,
    images: ImageSet,
    device: torch.device | str = "cpu",
    backend: Backend = "auto",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Gallery:
    """The gallery for ``metric``: cached embeddings for an embedding metric, else the images."""
    if isinstance(metric, EmbeddingMetric):
        from robustsim.metrics.embedding_cache import cached_embeddings

        if cache_dir is None:
            from robustsim.cache import cache_root as default_cache

            cache_dir = default_cache() / "galleries"
        phi = cached_embeddings(metric, images, Path(cache_dir), "gallery", batch_size, device, progress)
        return EmbeddingGallery(metric, torch.from_numpy(np.array(phi)).to(device), backend)
    if backend == "faiss":
        raise RobustsimError(f"metric {metric.name!r} has no embeddings, so no faiss index; use --index exact")
    from robustsim.metrics.pixel import L2Metric

    stacked = _stack(images).to(device)
    return SquaredL2Gallery(metric, stacked) if type(metric) is L2Metric else PairwiseGallery(metric, stacked)
