"""2AFC triplet datasets and a streaming loader (specs resolve in :mod:`robustsim.data.specs`).

A batch is a dict: ref, x0, x1 (B, 3, H, W) in [0, 1]; p (B,) fraction preferring x1; index (B,).
Every dataset has an ``identity``: a key of its content (for caches), never just its spec string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from robustsim.data.images import load_image, uint8_to_float
from robustsim.data.sources import Record
from robustsim.errors import DataError, RobustsimError

Batch = dict[str, torch.Tensor]


class TripletDataset(Dataset):
    """Base: ``__getitem__`` returns a dict with ref, x0, x1, p, index."""

    name: str = "triplets"
    native_size: int | None = None
    size: int | None = None

    @property
    def identity(self) -> str:
        """A key of the dataset's content (images and labels) at its load size."""
        raise NotImplementedError

    def groups(self) -> list[str]:
        """Per-triplet group label (category / distortion family); '' when none."""
        return [""] * len(self)

    def subset(self, n: int) -> TripletDataset:
        """The first ``n`` triplets, keeping name, groups and identity (``[:n]`` appended)."""
        return TripletSubset(self, min(n, len(self)))

    def select(self, indices: list[int]) -> TripletDataset:
        """The triplets at ``indices`` (a shard); items keep their original ``index``."""
        return TripletSelection(self, indices)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class TripletSubset(TripletDataset):
    """The first ``n`` triplets of another dataset."""

    def __init__(self, base: TripletDataset, n: int) -> None:
        self.base, self.n = base, n
        self.name, self.native_size, self.size = base.name, base.native_size, base.size

    @property
    def identity(self) -> str:
        return f"{self.base.identity}[:{self.n}]"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]

    def groups(self) -> list[str]:
        return self.base.groups()[: self.n]


class TripletSelection(TripletDataset):
    """Some triplets of another dataset, in the given order."""

    def __init__(self, base: TripletDataset, indices: list[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.name, self.native_size, self.size = base.name, base.native_size, base.size

    @property
    def identity(self) -> str:
        digest = hashlib.sha256(",".join(map(str, self.indices)).encode()).hexdigest()[:12]
        return f"{self.base.identity}[{digest}]"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.base[self.indices[i]]

    def groups(self) -> list[str]:
        g = self.base.groups()
        return [g[i] for i in self.indices]


class FileTriplets(TripletDataset):
    """Triplets of image files, loaded lazily and resized to ``size`` (None = native size)."""

    def __init__(self, records: list[Record], name: str, size: int | None = None, native_size: int | None = None):
        if not records:
            raise DataError(f"{name} holds no triplets; check the split and the layout")
        self.records = records
        self.name = name
        self.native_size = native_size
        self.size = size or native_size
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """The bytes of every image (:func:`robustsim.cache.content_digest`), labels and groups (hashed once)."""
        if self._identity is None:
            self._identity = self._content_identity()
        return self._identity

    def _content_identity(self) -> str:
        from robustsim.cache import content_digest

        h = hashlib.sha256(f"{self.name}|{self.size}".encode())
        h.update(content_digest([p for r in self.records for p in (r.ref, r.x0, r.x1)]).encode())
        for r in self.records:
            h.update(f"{r.p!r}|{r.group}".encode())
        return f"{self.name}:{self.size}:{h.hexdigest()[:20]}"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        imgs = [load_image(path, self.size) for path in (r.ref, r.x0, r.x1)]
        if self.size is None and len({tuple(im.shape) for im in imgs}) > 1:
            raise DataError(f"triplet {r.ref} has images of different sizes; pass a size to resize them")
        return {
            "ref": imgs[0],
            "x0": imgs[1],
            "x1": imgs[2],
            "p": torch.tensor(r.p, dtype=torch.float32),
            "index": torch.tensor(i),
        }

    def groups(self) -> list[str]:
        return [r.group for r in self.records]


class ArrayTriplets(TripletDataset):
    """Triplets stored as a uint8 array (N, 3, 3, H, W) (memory-mapped), labels p (N,).

    ``identity`` is the content key the creator vouches for (e.g. a verified manifest hash)."""

    def __init__(
        self,
        images: np.ndarray,
        p: np.ndarray,
        name: str,
        groups: list[str] | None = None,
        size: int | None = None,
        identity: str = "",
    ):
        self.images, self.p, self.name = images, p, name
        self._groups = groups or [""] * len(p)
        self.native_size = int(images.shape[-1])
        self.size = size
        self._identity = identity or f"{name}:" + hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest()[:16]

    @property
    def identity(self) -> str:
        return f"{self._identity}:{self.size}"

    def __len__(self) -> int:
        return len(self.p)

    def __getitem__(self, i: int) -> dict:
        t = uint8_to_float(self.images[i], self.size)
        return {"ref": t[0], "x0": t[1], "x1": t[2], "p": torch.tensor(float(self.p[i])), "index": torch.tensor(i)}

    def groups(self) -> list[str]:
        return list(self._groups)


def _collate(items: list[dict]) -> Batch:
    """Stack triplets; images of different sizes in one batch get a one-line error, not a torch trace."""
    shapes = {tuple(it["ref"].shape) for it in items}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise DataError(
            f"triplets in one batch have images of different sizes ({a[-2]}x{a[-1]} and {b[-2]}x{b[-1]}); "
            "resize the dataset to one size, use a metric with a fixed input size, or --batch-size 1"
        )
    return default_collate(items)


def triplet_loader(
    data: TripletDataset,
    batch_size: int = 32,
    workers: int | None = None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A streaming DataLoader; file datasets of more than one batch use worker processes, others none."""
    base = data.base if isinstance(data, (TripletSubset, TripletSelection)) else data
    if workers is None:
        workers = 2 if isinstance(base, FileTriplets) and len(data) > batch_size else 0
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
        collate_fn=_collate,
    )


def iter_batches(loader: DataLoader) -> Iterator[Batch]:
    """Iterate a loader, turning worker-wrapped robustsim errors back into their one-line form."""
    try:
        yield from loader
    except RobustsimError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        last = lines[-1] if lines else str(err)
        for prefix in (f"{type(err).__module__}.{type(err).__name__}: ", f"{type(err).__name__}: "):
            last = last.removeprefix(prefix)
        raise type(err)(last) from None
