"""Image file loading: RGB float (3, H, W) in [0, 1]; a corrupt or missing file names its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from robustsim.errors import DataError


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image file as RGB (grayscale/RGBA/palette converted), optionally resized to size x size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; check the dataset root and the spec's paths")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({type(err).__name__}: {err}); replace or remove the file") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8 array, for saving grids and PNGs."""
    return x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def uint8_to_float(arr: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [0, 1], resized (bilinear, antialiased) to size x size if given."""
    t = torch.from_numpy(np.array(arr)).float().div_(255.0)
    if size is not None and (t.shape[-1] != size or t.shape[-2] != size):
        flat = t.reshape(-1, *t.shape[-3:])
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        t = flat.clamp_(0, 1).reshape(*t.shape[:-2], size, size)
    return t
