"""Small 1-Lipschitz building blocks (l2 norm): channel padding, 4x4 pooling, GroupSort, projections.

Every layer here carries ``lipschitz_bound`` (its guaranteed l2 Lipschitz constant), which the
certifier multiplies along the model's structure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import InputError
from robustsim.nn import conv64
from robustsim.nn.bounds import SAFE, spectral_norm
from robustsim.nn.derived import Derived
from robustsim.nn.rounding import (
    EXACT,
    Terms,
    absolute,
    affine_local,
    affine_terms,
    bias_norm,
    gamma,
    local_dtype,
    memo,
    upper_norms,
)
from robustsim.nn.spectral import abs_conv_norm


class PaddingChannels(nn.Module):
    """Zero-pad channels C_in -> C_out (an isometry: norms are kept)."""

    lipschitz_bound = 1.0

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        return EXACT

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_channels - x.shape[1]
        if extra < 0:
            raise InputError(f"PaddingChannels({self.out_channels}) got {x.shape[1]} channels; it only adds channels")
        return F.pad(x, (0, 0, 0, 0, 0, extra))


class LipPool(nn.Module):
    """Sum of each k x k block divided by k (AvgPool2d(k, divisor_override=k)): 1-Lipschitz in l2.

    |sum of k^2 values| / k <= sqrt(sum of squares) by Cauchy-Schwarz, blocks do not overlap.
    """

    lipschitz_bound = 1.0

    def __init__(self, kernel_size: int = 4) -> None:
        super().__init__()
        self.k = kernel_size

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """A k^2-term sum errs by gamma_{k^2} sum |x| <= gamma_{k^2} k ||x_block||; the division by k is exact for
        a power of two, else it (or a product by 1/k) adds 2u."""
        power_of_two = self.k & (self.k - 1) == 0
        return gamma(self.k * self.k, unit), (0.0 if power_of_two else 2 * unit), 0.0

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        """Componentwise: each block sum errs by gamma_{k^2} sum |x| over the block; divided by k."""
        block_sums = F.avg_pool2d(absolute(x, local_dtype(x)), self.k, divisor_override=self.k)
        return gamma(self.k * self.k, unit) * upper_norms(block_sums, self.k * self.k + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.k or x.shape[-2] % self.k:
            raise InputError(f"LipPool({self.k}) needs H and W divisible by {self.k}, got {tuple(x.shape[-2:])}")
        return F.avg_pool2d(x, self.k, divisor_override=self.k)


class Truncate(nn.Module):
    """Keep the first ``n`` coordinates (a coordinate projection: 1-Lipschitz). LipSim's last layer."""

    lipschitz_bound = 1.0

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        return EXACT

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n]


class GroupSort2(nn.Module):
    """MaxMin activation on channel pairs (gradient-norm preserving, 1-Lipschitz)."""

    lipschitz_bound = 1.0

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        return EXACT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def OrthoLinear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:  # noqa: N802
    """A (semi-)orthogonal linear map: an isometry when out >= in, else a co-isometry.

    Uses torch's exact orthogonal parametrization (Householder products): no iterative
    orthogonalisation and no state mutated in ``forward``, so outputs are deterministic.
    """
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(in_features, out_features, bias=bias))
    layer.lipschitz_bound = lambda: spectral_norm(layer.weight)  # the matrix it applies, in float64

    def rounding_terms(in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        w = layer.weight.detach()
        return affine_terms(w.shape[1] + bias, spectral_norm(w.abs()), bias_norm(layer.bias), unit)

    layer.rounding_terms = rounding_terms
    layer.rounding_local = lambda x, out, unit: affine_local(F.linear, x, layer.weight, layer.bias, unit)
    return layer


def OrthoConv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,  # noqa: N802
    bias: bool = True,
) -> nn.Module:
    """An orthogonal convolution (orthogonium's AOC: Björck-orthogonalised blocks, circular padding where
    orthogonality holds; spectral norm 1 up to ~1e-6, measured in tests)."""
    from orthogonium.layers import AdaptiveOrthoConv2d

    layer = AdaptiveOrthoConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding="same" if stride == 1 else 0,
        padding_mode="circular",
        bias=bias,
    )
    return layer


class OrthoConvBlock(Derived):
    """An orthogonal convolution (orthogonium's AOC, circular padding) then MaxMin. Its bound is derived:
    the exact norm of the circular convolution at the input size ``spatial`` (set by the owning network).

    The applied tensor is the orthogonalised (out, in, k, k) kernel, computed in float32 from the stored
    parameters: memoised in eval mode while the kernel parameter is unchanged, stored when frozen. (orthogonium
    moves its power-iteration vectors on every evaluation, so an unfrozen kernel can differ in its last bits
    from one evaluation to the next; a frozen block applies one tensor.)"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.act = OrthoConv2d(channels, channels), GroupSort2()
        self.spatial: int | None = None

    def _key_tensors(self) -> list[torch.Tensor]:
        return [self.conv.parametrizations.weight.original]

    def depends_on_training(self) -> bool:
        """While training (unfrozen) the kernel is orthogonalised anew at each call, from moving power vectors."""
        return not self.frozen

    def _derive(self) -> torch.Tensor:
        return self.conv.weight

    def _derived_shape(self) -> tuple[int, ...]:
        c = self.conv.out_channels
        return (c, self.conv.in_channels // self.conv.groups, *self.conv.kernel_size)

    def kernel(self) -> torch.Tensor:
        """The (out, in, k, k) kernel the block applies."""
        return self.applied()

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """Circular padding and MaxMin are exact; the convolution adds gamma_n (|| |K| || ||x|| + ||b|| sqrt(HW))."""

        def compute() -> Terms:
            k, hw = self.kernel().detach(), in_shape[-2:]
            has_bias = self.conv.bias is not None
            bias = bias_norm(self.conv.bias, hw[0] * hw[1])
            return affine_terms(k[0].numel() + has_bias, abs_conv_norm(k), bias, unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        """The convolution's componentwise bound on the circularly padded input (MaxMin is exact)."""
        k = self.kernel()
        p = k.shape[-1] // 2
        return affine_local(
            lambda a, w: F.conv2d(F.pad(a, (p, p, p, p), mode="circular"), w), x, k, self.conv.bias, unit
        )

    def lipschitz_bound(self) -> float:
        from robustsim.nn.spectral import conv_operator_norm

        if self.spatial is None:
            raise RuntimeError("OrthoConvBlock needs its input size to prove its bound: set .spatial")
        with torch.no_grad():
            return max(1.0, float(conv_operator_norm(self.kernel().double(), self.spatial, circular=True)) * SAFE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.kernel().to(x.dtype)
        b = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
        p = w.shape[-1] // 2
        return self.act(conv64.conv2d(x, w, b, p, "circular"))


class Projection(Derived):
    """1-Lipschitz projection to the embedding width: a semi-orthogonal matrix, no bias.

    The used matrix is the Q factor of a reduced QR of the free parameter (of its transpose when
    the map is wide): orthonormal columns (isometry) or rows (co-isometry) up to float rounding
    (~1e-6), with an O(n k^2) forward and backward, where a Householder parametrization of a
    2560 x 256 map costs ~100x more per training step. The matrix is the applied tensor (memoised in
    eval mode, stored when frozen: :class:`~robustsim.nn.derived.Derived`).
    """

    def lipschitz_bound(self) -> float:
        """The float64 spectral norm of the semi-orthogonal matrix it applies (1 up to float32 rounding)."""
        return spectral_norm(self.applied())

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.orthogonal_(self.weight)

    def semi_orthogonal(self) -> torch.Tensor:
        """The semi-orthogonal matrix the layer applies."""
        return self.applied()

    def _derive(self) -> torch.Tensor:
        w = self.weight
        if w.shape[0] >= w.shape[1]:
            return torch.linalg.qr(w).Q
        return torch.linalg.qr(w.T).Q.T

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """y = Q x (+ b): gamma_n (|| |Q| || ||x|| + ||b||)."""

        def compute() -> Terms:
            q = self.applied().detach()
            n = q.shape[1] + (self.bias is not None)
            return affine_terms(n, spectral_norm(q.abs()), bias_norm(self.bias), unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        return affine_local(F.linear, x, self.applied(), self.bias, unit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.applied(), self.bias)
