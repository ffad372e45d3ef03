"""Single-image datasets for distillation: an image folder or the images of any 2AFC spec.

``open_images(spec, size)``: an existing directory is read recursively (png, jpg, jpeg, bmp, webp,
sorted paths); anything else is a 2AFC spec whose ref, x0 and x1 images are all used. ``mini``
alone means ``mini:train`` here (training images). Items are (3, size, size) floats in [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robustsim.data.images import load_image, uint8_to_float
from robustsim.data.triplets import TripletDataset, open_triplets
from robustsim.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_KEYS = ("ref", "x0", "x1")


class ImageSet(Dataset):
    """Base: ``__getitem__`` -> (3, S, S) in [0, 1]; ``identity`` names the content for caches."""

    name: str = "images"
    identity: str = ""


class PathImages(ImageSet):
    """Image files in a given order, loaded lazily at ``size`` (None = native size)."""

    def __init__(self, paths: list[Path], size: int | None, name: str, root: Path | None = None) -> None:
        self.paths, self.size, self.name = list(paths), size, name
        listing = "\n".join(
            f"{p.relative_to(root) if root else p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.paths
        )
        self.identity = f"{name}:{size}:" + hashlib.sha256(listing.encode()).hexdigest()[:16]

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
        super().__init__(paths, size, f"folder:{root}", root=root)


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

    def __init__(self, triplets: TripletDataset, spec: str, size: int) -> None:
        self.triplets, self.size, self.name = triplets, size, triplets.name
        self.identity = f"{spec}:{size}:{len(triplets)}"
        if spec.startswith("mini"):
            from robustsim.data.mini import manifest_hash

            self.identity += f":{manifest_hash()}"

    def __len__(self) -> int:
        return 3 * len(self.triplets)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.triplets[i // 3][_KEYS[i % 3]]


def open_images(spec: str, size: int) -> ImageSet:
    """Open an image folder or the images of a 2AFC spec at ``size`` x ``size``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderImages(path, size)
    if ":" not in spec and ("/" in spec or spec.startswith(".")):
        raise DataError(f"image folder {path} does not exist; pass an existing folder or a 2AFC spec such as mini")
    if spec == "mini":
        spec = "mini:train"
    return TripletImages(open_triplets(spec, size=size), spec, size)
