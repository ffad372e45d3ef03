"""Single-image datasets for distillation: an image folder or the images of any 2AFC spec.

Items are (3, size, size) floats in [0, 1]; ``identity`` keys the content (the files' bytes, or a verified
hash) for caches. ``robustsim.data.specs.open_images`` opens them from a spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robustsim.data.images import load_image, uint8_to_float
from robustsim.data.triplets import TripletDataset
from robustsim.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_KEYS = ("ref", "x0", "x1")


class ImageSet(Dataset):
    """Base: ``__getitem__`` -> (3, S, S) in [0, 1]; ``identity`` names the content for caches."""

    name: str = "images"
    identity: str = ""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` images (same name; identity gains ``[:n]``)."""
        return ImageSubset(self, min(n, len(self)))


class ImageSubset(ImageSet):
    """The first ``n`` images of another set."""

    def __init__(self, base: ImageSet, n: int) -> None:
        self.base, self.n, self.name = base, n, base.name
        self.identity = f"{base.identity}[:{n}]"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]


class PathImages(ImageSet):
    """Image files in a given order, loaded lazily at ``size`` (None = native size)."""

    def __init__(self, paths: list[Path], size: int | None, name: str) -> None:
        self.paths, self.size, self.name = list(paths), size, name
        from robustsim.cache import content_digest

        self.identity = f"{name}:{size}:" + content_digest(self.paths)[:16]  # the images' bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.size)


class FolderImages(PathImages):
    """Every image under ``root`` (recursive, sorted paths)."""

    def __init__(self, root: Path, size: int | None) -> None:
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise DataError(
                f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); check the path"
            )
        super().__init__(paths, size, f"folder:{root}")


class ArrayImages(ImageSet):
    """Images stored as a uint8 array (N, 3, H, W), resized to ``size`` on access."""

    def __init__(self, array: np.ndarray, size: int | None, name: str, identity: str) -> None:
        self.array, self.size, self.name = array, size, name
        self.identity = f"{identity}:{size}"

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> torch.Tensor:
        return uint8_to_float(np.asarray(self.array[i]), self.size)


class TripletImages(ImageSet):
    """Every image of a 2AFC dataset: item 3k + j is image j (ref, x0, x1) of triplet k."""

    def __init__(self, triplets: TripletDataset, size: int) -> None:
        self.triplets, self.size, self.name = triplets, size, triplets.name
        self.identity = f"triplets:{triplets.identity}:{size}"

    def __len__(self) -> int:
        return 3 * len(self.triplets)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.triplets[i // 3][_KEYS[i % 3]]
