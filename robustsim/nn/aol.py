"""AOL (Prach & Lampert 2022): almost-orthogonal layers, 1-Lipschitz for every weight by a rescaling.

W' = W diag(d) with d_j = (sum_i |W^T W|_ij)^(-1/2): then ||W'||_2 <= 1 (the rescaled Gram matrix
D |W^T W| D has row sums <= 1). For a convolution, |W^T W| is the kernel's absolute self-correlation over
input channels, summed over spatial offsets (the same quantity SLL uses). The rescaled weight depends on
the weights only: it is the layer's applied tensor (memoised in eval mode, stored when frozen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import InputError
from robustsim.nn import conv64
from robustsim.nn.bounds import SAFE, spectral_norm
from robustsim.nn.derived import Derived
from robustsim.nn.rounding import Terms, affine_local, affine_terms, bias_norm, memo
from robustsim.nn.spectral import abs_conv_norm


def _inverse_sqrt(rowsums: torch.Tensor) -> torch.Tensor:
    return rowsums.clamp_min(1e-12).rsqrt()


class AOLLinear(Derived):
    """y = W' x + b with W' the AOL rescaling of W (features -> out)."""

    def lipschitz_bound(self) -> float:
        """The float64 spectral norm of the rescaled weight the layer applies (1 up to float32 rounding)."""
        return spectral_norm(self.rescaled())

    def __init__(self, features: int, out: int | None = None) -> None:
        super().__init__()
        out = out or features
        self.weight = nn.Parameter(torch.empty(out, features))
        self.bias = nn.Parameter(torch.zeros(out))
        nn.init.orthogonal_(self.weight)

    def rescaled(self) -> torch.Tensor:
        return self.applied()

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """y = W' x + b with the rescaled weight it applies: gamma_n (|| |W'| || ||x|| + ||b||)."""

        def compute() -> Terms:
            w = self.rescaled().detach()
            return affine_terms(w.shape[1] + 1, spectral_norm(w.abs()), bias_norm(self.bias), unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        return affine_local(F.linear, x, self.rescaled(), self.bias, unit)

    def _derive(self) -> torch.Tensor:
        d = _inverse_sqrt((self.weight.T @ self.weight).abs().sum(1))
        return self.weight * d[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rescaled(), self.bias)


class AOLConv2d(Derived):
    """A stride-1 'same' convolution (zero padding) with the AOL rescaling on its input channels."""

    def lipschitz_bound(self) -> float:
        """AOL's proof evaluated on the applied kernel W' (float64): with M the absolute self-correlation of W'
        summed over offsets, ||conv_W'||^2 <= lambda_max(M) <= max_i (M v)_i / v_i for any positive v (Schur's
        test); v = 1 / d, d the rescaling of the stored W, gives exactly 1 in exact arithmetic (AOL's argument)."""

        def gram(w: torch.Tensor) -> torch.Tensor:
            kt = w.transpose(0, 1)  # (in, out, k, k)
            return F.conv2d(kt, kt, padding=w.shape[-1] - 1).abs().sum((2, 3))  # (in, in)

        with torch.no_grad():
            v = gram(self.weight.detach().double()).sum(1).sqrt()  # 1 / d
            m = gram(self.rescaled().detach().double())
            return math.sqrt(float(((m @ v) / v.clamp_min(1e-300)).max())) * SAFE

    def __init__(self, channels: int, out: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise InputError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        out = out or channels
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out))
        with torch.no_grad():  # near the identity: the rescaling then keeps the signal's norm
            nn.init.dirac_(self.weight)
            self.weight.add_(0.01 * torch.randn_like(self.weight))

    def rescaled(self) -> torch.Tensor:
        return self.applied()

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """The zero-padded convolution by the rescaled kernel it applies: gamma_n (|| |K'| || ||x|| + ||b|| sqrt HW)."""

        def compute() -> Terms:
            k, hw = self.rescaled().detach(), in_shape[-2:]
            return affine_terms(k[0].numel() + 1, abs_conv_norm(k), bias_norm(self.bias, hw[0] * hw[1]), unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        return affine_local(lambda a, w: F.conv2d(a, w, padding=self.padding), x, self.rescaled(), self.bias, unit)

    def _derive(self) -> torch.Tensor:
        kt = self.weight.transpose(0, 1)  # (in, out, k, k)
        gram = F.conv2d(kt, kt, padding=self.weight.shape[-1] - 1)  # (in, in, 2k-1, 2k-1)
        d = _inverse_sqrt(gram.abs().sum((1, 2, 3)))
        return self.weight * d[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv64.conv2d(x, self.rescaled(), self.bias, self.padding)
