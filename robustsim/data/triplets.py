"""2AFC triplet datasets behind one spec string, and a streaming loader.

Specs: ``nights:PATH[:split]``, ``bapps:PATH[:split[:cat,...]]``, ``csv:FILE``, ``mini[:split]``.
A batch is a dict: ref, x0, x1 (B, 3, H, W) in [0, 1]; p (B,) fraction preferring x1; index (B,).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robustsim.data.images import load_image, uint8_to_float
from robustsim.data.sources import (
    Record,
    bapps_records,
    csv_records,
    nights_records,
)
from robustsim.errors import DataError, RobustsimError

Batch = dict[str, torch.Tensor]


class TripletDataset(Dataset):
    """Base: ``__getitem__`` returns a dict with ref, x0, x1, p, index."""

    name: str = "triplets"
    native_size: int | None = None

    def groups(self) -> list[str]:
        """Per-triplet group label (category / distortion family); '' when none."""
        return [""] * len(self)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class FileTriplets(TripletDataset):
    """Triplets of image files, loaded lazily and resized to ``size`` (None = native size)."""

    def __init__(self, records: list[Record], name: str, size: int | None = None, native_size: int | None = None):
        if not records:
            raise DataError(f"{name} holds no triplets; check the split and the layout")
        self.records = records
        self.name = name
        self.native_size = native_size
        self.size = size or native_size

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
    """Triplets stored as a uint8 array (N, 3, 3, H, W) (memory-mapped), labels p (N,)."""

    def __init__(
        self, images: np.ndarray, p: np.ndarray, name: str, groups: list[str] | None = None, size: int | None = None
    ):
        self.images, self.p, self.name = images, p, name
        self._groups = groups or [""] * len(p)
        self.native_size = int(images.shape[-1])
        self.size = size

    def __len__(self) -> int:
        return len(self.p)

    def __getitem__(self, i: int) -> dict:
        t = uint8_to_float(self.images[i], self.size)
        return {"ref": t[0], "x0": t[1], "x1": t[2], "p": torch.tensor(float(self.p[i])), "index": torch.tensor(i)}

    def groups(self) -> list[str]:
        return list(self._groups)


def open_triplets(spec: str, size: int | None = None) -> TripletDataset:
    """Open a 2AFC dataset from a spec string (see module docstring); raises DataError on a bad spec."""
    kind, _, rest = spec.partition(":")
    if kind == "mini":
        from robustsim.data.mini import mini_triplets

        return mini_triplets(rest or "test", size=size)
    if not rest:
        raise DataError(
            f"data spec {spec!r} needs a path: nights:PATH[:split], bapps:PATH[:split[:cats]], csv:FILE or mini[:split]"
        )
    parts = rest.split(":")
    path = Path(parts[0]).expanduser()
    if kind == "nights":
        split = parts[1] if len(parts) > 1 and parts[1] else "test"
        return FileTriplets(nights_records(path, split), f"nights:{split}", size, native_size=224)
    if kind == "bapps":
        split = parts[1] if len(parts) > 1 and parts[1] else "val"
        cats = tuple(parts[2].split(",")) if len(parts) > 2 and parts[2] else None
        return FileTriplets(bapps_records(path, split, cats), f"bapps:{split}", size, native_size=64)
    if kind == "csv":
        return FileTriplets(csv_records(path), f"csv:{path.name}", size)
    raise DataError(f"unknown data spec kind {kind!r} in {spec!r}; use nights:, bapps:, csv: or mini")


def triplet_loader(
    data: TripletDataset,
    batch_size: int = 32,
    workers: int | None = None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A streaming DataLoader; file datasets use worker processes, in-memory ones none."""
    if workers is None:
        workers = 2 if isinstance(data, FileTriplets) else 0
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator, persistent_workers=False
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
