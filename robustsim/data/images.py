"""Image file loading: RGB float (3, H, W) in [0, 1]; a corrupt, missing or oversized file names its path.

Pixel values are converted by the image's real range: 8-bit images by 255, 16-bit ones (``I;16``,
16-bit PNG grayscale) by 65535, 32-bit integer ones by their format's range, float images (``F``,
float TIFF) as they are when in [0, 1] and by 255 when in [0, 255] (anything else is refused, never
clipped). Decoding is capped at ``ROBUSTSIM_MAX_PIXELS`` pixels (default 40 million) checked from
the header before any pixel is decoded; JPEGs decode at a reduced scale when a small size is wanted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from robustsim.errors import DataError

DEFAULT_MAX_PIXELS = 40_000_000
_HIGH_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def max_pixels() -> int:
    """The decoded-pixel cap (``ROBUSTSIM_MAX_PIXELS``, default 40 million)."""
    text = os.environ.get("ROBUSTSIM_MAX_PIXELS", "")
    try:
        value = int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"ROBUSTSIM_MAX_PIXELS={text!r} is not an integer; unset it or give a pixel count") from None
    return max(1, value)


def _float_array(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a high-depth or float image, by its real range."""
    arr = np.asarray(im)
    if im.mode in _HIGH_DEPTH:
        arr = arr.astype(np.float32) / _HIGH_DEPTH[im.mode]
    elif im.mode == "I":  # 32-bit integers: 16-bit PNGs decode to this; otherwise the full int32 range
        peak = 65535.0 if im.format == "PNG" or int(arr.max(initial=0)) <= 65535 else 2.0**31 - 1
        arr = arr.astype(np.float32) / peak
    else:  # "F"
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"image {path} holds NaN or inf pixels; replace the file")
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        if lo >= 0 and hi > 1 and hi <= 255:
            arr = arr / 255.0
        elif lo < 0 or hi > 255:
            raise DataError(
                f"float image {path} has values in [{lo:.3g}, {hi:.3g}]; its range is unknown, "
                "save it with values in [0, 1] or as 8/16-bit"
            )
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.clip(arr[..., :3], 0.0, 1.0)


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image file as RGB (grayscale/RGBA/palette/16-bit/float converted), optionally resized to
    size x size (bilinear)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; check the dataset root and the spec's paths")
    cap = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > cap:
                    raise DataError(
                        f"image {path} declares {w}x{h} pixels, over the {cap} cap; shrink it or raise "
                        "ROBUSTSIM_MAX_PIXELS"
                    )
                if size is not None and im.format == "JPEG":
                    im.draft("RGB", (size, size))  # decode at a reduced DCT scale, still >= size
                im.load()
                if im.mode in _HIGH_DEPTH or im.mode in ("I", "F"):
                    t = torch.from_numpy(_float_array(im, path).copy()).permute(2, 0, 1)
                    if size is not None and tuple(t.shape[-2:]) != (size, size):
                        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]
                    return t.clamp_(0.0, 1.0)
                if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, rgba)
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"image {path} declares more pixels than the {cap} cap allows; shrink it") from None
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
