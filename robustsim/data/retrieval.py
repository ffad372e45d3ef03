"""Retrieval benchmarks: queries, a gallery and expert annotations, behind one spec string.

Specs:

- ``vsd:ROOT`` -- the VSD layout: ``ROOT/images/`` (the gallery: every image under it) and
  ``ROOT/pairs.csv`` with columns ``query,candidate,label`` (paths relative to ``images/``;
  label 1 = similar, 0 = judged not similar). Queries are the CSV's distinct ``query`` values;
  pairs not in the CSV are *unannotated*; a query is never ranked against itself.
- ``plain:ROOT`` -- ``ROOT/queries/``, ``ROOT/gallery/`` and ``ROOT/positives.csv`` with columns
  ``query,positive`` (paths relative to ``queries/`` and ``gallery/``); every pair not listed is a
  negative (fully annotated).
- ``mini`` -- the bundled synthetic set (:mod:`robustsim.data.mini_retrieval`).
- a bare folder path is read as ``plain`` when it has ``positives.csv``, else as ``vsd``
  (specs resolve in :mod:`robustsim.data.specs`).

Labels are a (Q, G) int8 matrix: 1 positive, 0 negative, -1 unannotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustsim.data.imageset import IMAGE_SUFFIXES, ImageSet, PathImages
from robustsim.data.sources import read_csv_rows
from robustsim.errors import DataError

POSITIVE, NEGATIVE, UNANNOTATED = 1, 0, -1


@dataclass
class RetrievalSet:
    """Queries and gallery (images at one size), labels (Q, G) and the pairs never ranked."""

    name: str
    queries: ImageSet
    gallery: ImageSet
    labels: torch.Tensor  # (Q, G) int8
    exclude: torch.Tensor  # (Q, G) bool: the query itself, when it is also a gallery item
    note: str = ""

    def __post_init__(self) -> None:
        shape = (len(self.queries), len(self.gallery))
        if tuple(self.labels.shape) != shape or tuple(self.exclude.shape) != shape:
            raise ValueError(f"labels and exclude must have shape {shape}")

    @property
    def n_ranked(self) -> int:
        """How many gallery items every query is ranked against (the gallery less its excluded items)."""
        most_excluded = int(self.exclude.sum(1).max()) if self.exclude.numel() else 0
        return len(self.gallery) - most_excluded

    @property
    def n_positives(self) -> torch.Tensor:
        """(Q,) annotated positives per query (excluded pairs never count)."""
        return ((self.labels == POSITIVE) & ~self.exclude).sum(1)

    def subset(self, n: int) -> RetrievalSet:
        """The first ``n`` queries (same gallery)."""
        from torch.utils.data import Subset

        q = Subset(self.queries, range(min(n, len(self.queries))))
        q.identity = f"{self.queries.identity}[:{n}]"  # type: ignore[attr-defined]
        return RetrievalSet(self.name, q, self.gallery, self.labels[:n], self.exclude[:n], self.note)  # type: ignore[arg-type]


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    rows = list(read_csv_rows(path, columns))
    if not rows:
        raise DataError(f"{path} has a header but no rows; add at least one annotated pair")
    return rows


def _images_under(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; check the retrieval set's layout")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _lookup(index: dict[str, int], name: str, csv_path: Path, line: int, folder: Path) -> int:
    if name not in index:
        raise DataError(
            f"{csv_path} line {line}: {name!r} is not an image under {folder}; fix the path or add the file"
        )
    return index[name]


def open_vsd(root: Path, size: int | None = None) -> RetrievalSet:
    """The VSD layout (see module docstring)."""
    images_dir, csv_path = root / "images", root / "pairs.csv"
    paths = _images_under(images_dir)
    names = [p.relative_to(images_dir).as_posix() for p in paths]
    index = {n: i for i, n in enumerate(names)}
    rows = _read_csv(csv_path, ("query", "candidate", "label"))
    pairs: dict[tuple[int, int], tuple[int, int]] = {}
    queries: dict[int, None] = {}  # insertion-ordered set
    for line, row in rows:
        q = _lookup(index, row["query"], csv_path, line, images_dir)
        c = _lookup(index, row["candidate"], csv_path, line, images_dir)
        if row["label"] not in ("0", "1"):
            raise DataError(f"{csv_path} line {line}: label {row['label']!r} must be 1 (similar) or 0 (not similar)")
        label = int(row["label"])
        if q == c:
            raise DataError(f"{csv_path} line {line}: pairs an image with itself; remove the row")
        prev = pairs.get((q, c))
        if prev is not None and prev[0] != label:
            raise DataError(
                f"{csv_path} lines {prev[1]} and {line} label the pair ({row['query']}, {row['candidate']}) "
                "both 0 and 1; keep one"
            )
        pairs[(q, c)] = (label, line)
        queries.setdefault(q)
    qpos = {q: i for i, q in enumerate(queries)}
    labels = torch.full((len(queries), len(paths)), UNANNOTATED, dtype=torch.int8)
    for (q, c), (label, _) in pairs.items():
        labels[qpos[q], c] = label
    exclude = torch.zeros_like(labels, dtype=torch.bool)
    exclude[torch.arange(len(queries)), torch.tensor(list(queries))] = True
    return RetrievalSet(
        f"vsd:{root.name}",
        PathImages([paths[q] for q in queries], size, f"vsd-queries:{root}"),
        PathImages(paths, size, f"vsd-gallery:{root}"),
        labels,
        exclude,
        "expert annotations; unannotated pairs count as not similar in recall and mAP",
    )


def open_plain(root: Path, size: int | None = None) -> RetrievalSet:
    """The plain layout (see module docstring)."""
    qdir, gdir, csv_path = root / "queries", root / "gallery", root / "positives.csv"
    qpaths, gpaths = _images_under(qdir), _images_under(gdir)
    qindex = {p.relative_to(qdir).as_posix(): i for i, p in enumerate(qpaths)}
    gindex = {p.relative_to(gdir).as_posix(): i for i, p in enumerate(gpaths)}
    labels = torch.full((len(qpaths), len(gpaths)), NEGATIVE, dtype=torch.int8)
    for line, row in _read_csv(csv_path, ("query", "positive")):
        q = _lookup(qindex, row["query"], csv_path, line, qdir)
        labels[q, _lookup(gindex, row["positive"], csv_path, line, gdir)] = POSITIVE
    return RetrievalSet(
        f"plain:{root.name}",
        PathImages(qpaths, size, f"plain-queries:{root}"),
        PathImages(gpaths, size, f"plain-gallery:{root}"),
        labels,
        torch.zeros_like(labels, dtype=torch.bool),
        "every pair not in positives.csv is a negative",
    )
