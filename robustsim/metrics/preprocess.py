"""What a metric does to a caller's [0, 1] image before its network: a resize (:class:`Resize`: size,
interpolation, antialiasing, optional centre crop), then a per-channel normalisation (x - mean) / std.

Every step is linear in the image, so certificates need its exact l2 operator norm for the caller's image
size (:func:`resize_norm`). The resize is separable: X -> A_h X A_w^T per channel, where A_h, A_w are 1-D
matrices read off by applying the very same interpolation to the identity, and a centre crop keeps some rows
of each. So ||resize|| = ||A_h||_2 ||A_w||_2, each a small exact singular value; the normalisation adds
1 / min(std).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from robustsim.errors import InputError

if TYPE_CHECKING:  # torch is imported where a resize runs: the declarations (the zoo's rows) load without it
    import torch

Interpolation = Literal["bilinear", "bicubic"]
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Resize:
    """Resize to ``size`` x ``size`` (None: keep the caller's size). ``crop=False`` squashes the image to a
    square; ``crop=True`` resizes its shorter side to ``scale_size`` (default ``size``) and keeps the centre
    ``size`` x ``size``: torchvision's Resize(scale_size) then CenterCrop(size), as open_clip (224 / 224) and
    DINO's evaluation (256 / 224) apply it."""

    size: int | None = None
    interpolation: Interpolation = "bilinear"
    antialias: bool = False
    crop: bool = False
    scale_size: int | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise InputError(f"size must be a positive integer or None, got {self.size!r}")
        if self.scale_size is not None and (not self.crop or self.size is None or self.scale_size < self.size):
            raise InputError(f"scale_size {self.scale_size} needs crop=True and a size <= it")

    def at(self, size: int | None) -> Resize:
        """The same preprocessing for a network of side ``size`` (a crop keeps its proportion: DINO's 256 / 224)."""
        scale = self.scale_size
        if scale is not None:
            scale = None if size is None else max(size, round(scale * size / self.size))
        return Resize(size, self.interpolation, self.antialias, self.crop and size is not None, scale)

    def resized_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The size the image is interpolated to (before any crop)."""
        h, w = hw
        if self.size is None:
            return h, w
        if not self.crop:
            return self.size, self.size
        short = self.scale_size or self.size
        if h <= w:  # torchvision: the shorter side becomes ``short``, the longer one int(short * long / short side)
            return short, int(short * w / h)
        return int(short * h / w), short

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        return (int(hw[0]), int(hw[1])) if self.size is None else (self.size, self.size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The resized batch (differentiable); the identity when nothing changes."""
        import torch.nn.functional as F

        hw = tuple(x.shape[-2:])
        mid = self.resized_hw(hw)
        if mid != hw:
            x = F.interpolate(x, size=mid, mode=self.interpolation, align_corners=False, antialias=self.antialias)
        if self.crop and self.size is not None:
            top, left = _crop_offset(mid[0], self.size), _crop_offset(mid[1], self.size)
            x = x[..., top : top + self.size, left : left + self.size]
        return x

    def describe(self) -> str:
        if self.size is None:
            return "no resize"
        how = f"{self.interpolation}{', antialiased' if self.antialias else ''}"
        if self.crop:
            return f"shorter side to {self.scale_size or self.size} ({how}), centre {self.size} x {self.size} crop"
        return f"{self.size} x {self.size} ({how})"


def _crop_offset(n: int, size: int) -> int:
    return int(round((n - size) / 2.0))  # torchvision's center_crop


@functools.lru_cache(maxsize=256)
def axis_matrix(
    n_in: int, n_mid: int, n_out: int, interpolation: str, antialias: bool, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(n_out, n_in) matrix (as float64) of one axis of the resize: interpolate n_in -> n_mid in ``dtype`` (the
    same call as :meth:`Resize.__call__`, on an identity: each entry is a weight exactly as computed), then keep
    the centre n_out rows (``dtype`` None: float64)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n_in, dtype=dtype or torch.float64)[:, None, None, :]  # n_in signals of length n_in, height 1
    if n_mid == n_in:
        rows = eye[:, 0, 0, :]
    else:
        rows = F.interpolate(eye, size=(1, n_mid), mode=interpolation, align_corners=False, antialias=antialias)
        rows = rows[:, 0, 0, :]
    start = _crop_offset(n_mid, n_out)
    return rows.T[start : start + n_out].double().contiguous()


def axis_matrices(resize: Resize, hw: tuple[int, int], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[A_h, A_w] of ``resize`` on ``hw`` images, with the weights ``dtype`` computes (None: float64)."""
    mid, out = resize.resized_hw(hw), resize.output_hw(hw)
    return [
        axis_matrix(n, m, o, resize.interpolation, resize.antialias, dtype)
        for n, m, o in zip(hw, mid, out, strict=True)
    ]


@functools.lru_cache(maxsize=256)
def resize_norm(resize: Resize, hw: tuple[int, int], dtype: torch.dtype | None = None) -> float:
    """The l2 operator norm (per channel, the same on every channel) of ``resize`` on ``hw`` images, with the
    interpolation weights ``dtype`` computes (float64 singular values, widened by 1e-9 for their rounding)."""
    import torch

    hw = (int(hw[0]), int(hw[1]))
    if resize.resized_hw(hw) == hw and resize.output_hw(hw) == hw:
        return 1.0
    a_h, a_w = axis_matrices(resize, hw, dtype)
    return float(torch.linalg.matrix_norm(a_h, ord=2) * torch.linalg.matrix_norm(a_w, ord=2)) * (1 + 1e-9)
