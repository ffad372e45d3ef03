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

Labels are a sparse (Q, G) int8 matrix (:class:`PairLabels`): 1 positive, 0 negative, -1 unannotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustsim.data.imageset import IMAGE_SUFFIXES, ImageSet, PathImages
from robustsim.data.sources import read_csv_rows
from robustsim.errors import DataError

POSITIVE, NEGATIVE, UNANNOTATED = 1, 0, -1


class PairLabels:
    """A (Q, G) matrix stored sparsely: every pair holds ``default`` except the listed (row, col, value)
    entries, so memory is linear in the annotations, never in queries x gallery. Indexing rows
    (``labels[idx]``) gives them dense, for one batch of queries at a time."""

    def __init__(self, shape: tuple[int, int], default: int, rows, cols, values, dtype=torch.int8) -> None:
        self.shape, self.default, self.dtype = (int(shape[0]), int(shape[1])), default, dtype
        rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
        values = torch.as_tensor(values, dtype=dtype)
        if rows.numel() and (int(rows.max()) >= self.shape[0] or int(cols.max()) >= self.shape[1]):
            raise ValueError(f"an entry lies outside the {self.shape} matrix")
        order = torch.argsort(rows * self.shape[1] + cols)
        self.rows, self.cols, self.values = rows[order], cols[order], values[order]
        self._starts = torch.searchsorted(self.rows, torch.arange(self.shape[0] + 1))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        """Dense rows ``idx`` (a tensor or list of query indices, or a slice), shape (B, G)."""
        if isinstance(idx, slice):
            idx = torch.arange(self.shape[0])[idx]
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        out = torch.full((idx.numel(), self.shape[1]), self.default, dtype=self.dtype)
        for b, q in enumerate(idx.tolist()):
            lo, hi = int(self._starts[q]), int(self._starts[q + 1])
            out[b, self.cols[lo:hi]] = self.values[lo:hi]
        return out

    def dense(self) -> torch.Tensor:
        return self[torch.arange(self.shape[0])]

    def count(self, value: int) -> torch.Tensor:
        """(Q,) entries per row equal to ``value``."""
        if value == self.default:
            listed = torch.bincount(self.rows, minlength=self.shape[0])
            hits = torch.bincount(self.rows[self.values == value], minlength=self.shape[0])
            return self.shape[1] - listed + hits
        return torch.bincount(self.rows[self.values == value], minlength=self.shape[0])

    def head(self, n: int) -> PairLabels:
        """The first ``n`` rows."""
        keep = self.rows < n
        return PairLabels(
            (min(n, self.shape[0]), self.shape[1]),
            self.default,
            self.rows[keep],
            self.cols[keep],
            self.values[keep],
            self.dtype,
        )

    @classmethod
    def from_dense(cls, matrix: torch.Tensor, default: int) -> PairLabels:
        rows, cols = (matrix != default).nonzero(as_tuple=True)
        return cls(tuple(matrix.shape), default, rows, cols, matrix[rows, cols], matrix.dtype)


@dataclass
class RetrievalSet:
    """Queries and gallery (images at one size), labels (Q, G) and the pairs never ranked, both stored
    sparsely (:class:`PairLabels`)."""

    name: str
    queries: ImageSet
    gallery: ImageSet
    labels: PairLabels  # (Q, G) int8: POSITIVE, NEGATIVE or UNANNOTATED
    exclude: PairLabels  # (Q, G) bool: the query itself, when it is also a gallery item
    note: str = ""

    def __post_init__(self) -> None:
        shape = (len(self.queries), len(self.gallery))
        if tuple(self.labels.shape) != shape or tuple(self.exclude.shape) != shape:
            raise ValueError(f"labels and exclude must have shape {shape}")

    @property
    def n_ranked(self) -> int:
        """How many gallery items every query is ranked against (the gallery less its excluded items)."""
        excluded = self.exclude.count(True)
        return len(self.gallery) - (int(excluded.max()) if excluded.numel() else 0)

    @property
    def n_positives(self) -> torch.Tensor:
        """(Q,) annotated positives per query (excluded pairs never count)."""
        ex = self.exclude
        both = torch.zeros(self.labels.shape[0], dtype=torch.long)
        if ex.rows.numel():
            pos_at = self.labels[ex.rows].gather(1, ex.cols[:, None])[:, 0] == POSITIVE  # excluded positives
            both = torch.bincount(ex.rows[pos_at & ex.values.bool()], minlength=self.labels.shape[0])
        return self.labels.count(POSITIVE) - both

    def subset(self, n: int) -> RetrievalSet:
        """The first ``n`` queries (same gallery)."""
        q = self.queries.subset(n)
        return RetrievalSet(self.name, q, self.gallery, self.labels.head(n), self.exclude.head(n), self.note)


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
    shape = (len(queries), len(paths))
    labels = PairLabels(
        shape,
        UNANNOTATED,
        [qpos[q] for q, _ in pairs],
        [c for _, c in pairs],
        [label for label, _ in pairs.values()],
    )
    exclude = PairLabels(shape, False, list(range(len(queries))), list(queries), [True] * len(queries), torch.bool)
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
    positives: set[tuple[int, int]] = set()
    for line, row in _read_csv(csv_path, ("query", "positive")):
        q = _lookup(qindex, row["query"], csv_path, line, qdir)
        positives.add((q, _lookup(gindex, row["positive"], csv_path, line, gdir)))
    shape = (len(qpaths), len(gpaths))
    labels = PairLabels(
        shape, NEGATIVE, [q for q, _ in positives], [g for _, g in positives], [POSITIVE] * len(positives)
    )
    return RetrievalSet(
        f"plain:{root.name}",
        PathImages(qpaths, size, f"plain-queries:{root}"),
        PathImages(gpaths, size, f"plain-gallery:{root}"),
        labels,
        PairLabels(shape, False, [], [], [], torch.bool),
        "every pair not in positives.csv is a negative",
    )
