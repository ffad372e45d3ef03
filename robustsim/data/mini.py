"""``mini``: a deterministic, synthetic 2AFC set built offline from photos that installed packages ship.

Not human judgements. Each triplet takes a 64x64 crop of a bundled photo (scikit-image, matplotlib)
as the reference and the same crop under one distortion family at two strengths; the label says the
*weaker* distortion is closer (p = 1 for x1 when x1 is weaker). Each distorted view is cut from the
photo at its own offset of up to 2 px from the reference window: a shift people hardly notice but
pixel metrics penalise. Splits use disjoint photos. The set is cached under
``$ROBUSTSIM_CACHE`` (default ``~/.cache/robustsim``) with a manifest hash of the recipe and sources.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from robustsim.cache import build_cached
from robustsim.data.distortions import FAMILIES
from robustsim.data.triplets import ArrayTriplets
from robustsim.errors import DataError

RECIPE_VERSION = 1
SIZE = 64
SHIFT = 2
COUNTS = {"train": 1500, "val": 200, "test": 600}
SPLIT_SOURCES = {
    "test": ["astronaut", "coffee", "rocket", "camera", "gravel", "hubble_deep_field", "motorcycle_right"],
    "val": ["coins", "clock", "moon"],
    "train": [
        "chelsea",
        "immunohistochemistry",
        "retina",
        "motorcycle_left",
        "grace_hopper",
        "brick",
        "grass",
        "text",
        "page",
        "colorwheel",
    ],
}


def source_image(name: str) -> np.ndarray:
    """A bundled photo as uint8 (H, W, 3)."""
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    import skimage.data as skd

    if name.startswith("motorcycle_"):
        left, right, _ = skd.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


@functools.lru_cache(maxsize=1)
def _sources_digest() -> str:
    h = hashlib.sha256()
    for split in sorted(SPLIT_SOURCES):
        for name in SPLIT_SOURCES[split]:
            img = source_image(name)
            h.update(name.encode())
            h.update(str(img.shape).encode())
            h.update(hashlib.sha256(img.tobytes()).digest())
    return h.hexdigest()


def _recipe() -> dict:
    return {
        "version": RECIPE_VERSION,
        "size": SIZE,
        "shift": SHIFT,
        "counts": COUNTS,
        "splits": SPLIT_SOURCES,
        "families": sorted(FAMILIES),
    }


def manifest_hash(recipe: dict | None = None) -> str:
    """Hash of a recipe (default: mini's) and the source photos' bytes; names the cache folder."""
    blob = json.dumps(recipe or _recipe(), sort_keys=True).encode() + _sources_digest().encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def generate_split(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Build ``n`` triplets: images (n, 3, 3, SIZE, SIZE) uint8, p (n,), family per triplet."""
    rng = np.random.default_rng(seed)
    photos = [source_image(name) for name in SPLIT_SOURCES[split]]
    families = sorted(FAMILIES)
    images = np.empty((n, 3, 3, SIZE, SIZE), dtype=np.uint8)
    p = np.empty(n, dtype=np.float32)
    fams = []
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        y = int(rng.integers(SHIFT, h - SIZE - SHIFT))
        x = int(rng.integers(SHIFT, w - SIZE - SHIFT))
        family = families[i % len(families)]
        weak = float(rng.uniform(0.05, 0.45))
        strong = float(min(1.0, weak + rng.uniform(0.3, 0.55)))
        ref = photo[y : y + SIZE, x : x + SIZE]
        weak_img = _shifted_view(photo, y, x, family, weak, rng)
        strong_img = _shifted_view(photo, y, x, family, strong, rng)
        x1_is_weak = bool(rng.random() < 0.5)
        x0, x1 = (strong_img, weak_img) if x1_is_weak else (weak_img, strong_img)
        images[i] = np.stack([ref, x0, x1]).transpose(0, 3, 1, 2)
        p[i] = 1.0 if x1_is_weak else 0.0
        fams.append(family)
    return images, p, fams


def _shifted_view(photo: np.ndarray, y: int, x: int, family: str, strength: float, rng: np.random.Generator):
    """The crop at (y, x) moved by up to SHIFT px, then distorted."""
    dy, dx = rng.integers(-SHIFT, SHIFT + 1, size=2)
    crop = np.ascontiguousarray(photo[y + dy : y + dy + SIZE, x + dx : x + dx + SIZE])
    return FAMILIES[family](crop, strength, rng)


def _write_mini(tmp: Path) -> dict:
    for k, (split, n) in enumerate(sorted(COUNTS.items())):
        images, p, fams = generate_split(split, n, seed=1000 + k)
        np.save(tmp / f"{split}.npy", images)
        np.save(tmp / f"{split}_p.npy", p)
        (tmp / f"{split}_family.json").write_text(json.dumps(fams))
    return {"recipe": _recipe(), "note": "synthetic proxy: label = weaker distortion, not human judgements"}


def build_mini() -> Path:
    """Generate every split into the cache atomically (once), verified on every open; return the folder."""
    return build_cached("mini", manifest_hash(), _write_mini)


def mini_triplets(split: str = "test", size: int | None = None) -> ArrayTriplets:
    """The ``mini`` split (train, val or test), built on first use."""
    if split not in COUNTS:
        raise DataError(f"unknown mini split {split!r}; choose one of {', '.join(sorted(COUNTS))}")
    root = build_mini()
    images = np.load(root / f"{split}.npy", mmap_mode="r")
    p = np.load(root / f"{split}_p.npy")
    fams = json.loads((root / f"{split}_family.json").read_text())
    return ArrayTriplets(images, p, f"mini:{split}", groups=fams, size=size, identity=f"{root.name}:{split}")
