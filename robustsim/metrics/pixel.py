"""Pixel-space baselines: l2 (mean squared error), 1 - SSIM, 1 - MS-SSIM (pytorch-msssim)."""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim, ssim

from robustsim.errors import InputError
from robustsim.metrics.base import Metric, resize


def _same_size(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.shape != y.shape:
        raise InputError(
            f"{name} compares pixels, so x and y need equal shapes (got {tuple(x.shape)} and "
            f"{tuple(y.shape)}); resize one with torch.nn.functional.interpolate"
        )


class L2Metric(Metric):
    """Mean squared pixel difference. Its 2AFC boundary in the reference image is a hyperplane."""

    name = "l2"

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_size(x, y, self.name)
        return (x - y).pow(2).flatten(1).mean(1)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every pair's distance from pixel differences (no |x|^2 + |y|^2 - 2 x.y shortcut), so equal
        distances stay equal and d(x, y) == d(y, x) exactly."""
        _same_size(x[:1], y[:1], self.name)
        flat_x, flat_y = x.flatten(1), y.flatten(1)
        return torch.cdist(flat_x, flat_y, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / x[0].numel()


class L1Metric(Metric):
    """Mean absolute pixel difference."""

    name = "l1"

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_size(x, y, self.name)
        return (x - y).abs().flatten(1).mean(1)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_size(x[:1], y[:1], self.name)
        return torch.cdist(x.flatten(1), y.flatten(1), p=1) / x[0].numel()


class SSIMMetric(Metric):
    """1 - SSIM (Gaussian window 11, sigma 1.5, data range 1); windows shrink for tiny images."""

    name = "ssim"

    def __init__(self, win_size: int = 11, validate: bool = True) -> None:
        super().__init__(validate=validate)
        self.win_size = win_size

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_size(x, y, self.name)
        if min(x.shape[-2:]) < 3:
            raise InputError(
                f"ssim needs images of at least 3x3 pixels, got {x.shape[-2]}x{x.shape[-1]}; use l2 for tiny images"
            )
        win = min(self.win_size, _largest_odd(min(x.shape[-2:])))
        return 1.0 - ssim(x, y, data_range=1.0, size_average=False, win_size=win)


class MSSSIMMetric(Metric):
    """1 - MS-SSIM over 5 scales. pytorch-msssim needs min side > 16 (win - 1), so the window
    shrinks (down to 3) on small images; images under 33 px are upsampled to 48 px first."""

    name = "ms-ssim"

    def __init__(self, win_size: int = 11, validate: bool = True) -> None:
        super().__init__(validate=validate)
        self.win_size = win_size

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_size(x, y, self.name)
        side = min(x.shape[-2:])
        if side <= 32:
            x, y, side = resize(x, 48), resize(y, 48), 48
        win = self.win_size
        while win > 3 and side <= (win - 1) * 16:
            win -= 2
        return 1.0 - ms_ssim(x, y, data_range=1.0, size_average=False, win_size=win)


def _largest_odd(n: int) -> int:
    return n if n % 2 else n - 1
