"""Distortion families for the synthetic ``mini`` 2AFC set.

Each family maps (uint8 HxWx3 image, strength s in [0, 1], rng) to a distorted uint8 image;
larger s is a stronger (more visible) distortion of the same kind.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Distortion = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _f(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def noise(img, s, rng):
    return _u8(_f(img) + rng.normal(0, 0.01 + 0.12 * s, img.shape))


def blur(img, s, rng):
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.3 + 2.2 * s)))


def jpeg(img, s, rng):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(round(60 - 55 * s)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def color_shift(img, s, rng):
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-8
    return _u8(_f(img) + direction * (0.03 + 0.25 * s))


def contrast(img, s, rng):
    factor = 1.0 - (0.1 + 0.7 * s) if rng.random() < 0.7 else 1.0 + (0.15 + 1.2 * s)
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor))


def saturation(img, s, rng):
    return np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(1.0 - (0.15 + 0.85 * s)))


def pixelate(img, s, rng):
    h, w = img.shape[:2]
    f = 1.3 + 4.7 * s
    small = Image.fromarray(img).resize((max(1, int(w / f)), max(1, int(h / f))), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def warp(img, s, rng):
    h, w = img.shape[:2]
    amp = 0.3 + 3.0 * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fy, fx, py, px = rng.uniform(1, 3), rng.uniform(1, 3), rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    sy = np.clip(yy + amp * np.sin(2 * np.pi * fy * xx / w + py), 0, h - 1)
    sx = np.clip(xx + amp * np.sin(2 * np.pi * fx * yy / h + px), 0, w - 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    a = _f(img)
    out = a[y0, x0] * (1 - wy) * (1 - wx) + a[y0, x1] * (1 - wy) * wx + a[y1, x0] * wy * (1 - wx) + a[y1, x1] * wy * wx
    return _u8(out)


def salt_pepper(img, s, rng):
    out = img.copy()
    mask = rng.random(img.shape[:2]) < 0.005 + 0.08 * s
    out[mask] = np.where(rng.random((int(mask.sum()), 1)) < 0.5, 0, 255)
    return out


def posterize(img, s, rng):
    levels = int(round(24 - 20 * s))
    return _u8(np.round(_f(img) * (levels - 1)) / (levels - 1))


def brightness(img, s, rng):
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _u8(_f(img) + sign * (0.03 + 0.3 * s))


FAMILIES: dict[str, Distortion] = {
    "noise": noise,
    "blur": blur,
    "jpeg": jpeg,
    "color": color_shift,
    "contrast": contrast,
    "saturation": saturation,
    "pixelate": pixelate,
    "warp": warp,
    "saltpepper": salt_pepper,
    "posterize": posterize,
    "brightness": brightness,
}
