"""Small 1-Lipschitz building blocks (l2 norm): channel padding, 4x4 pooling, GroupSort, projections.

Every layer here carries ``lipschitz_bound`` (its guaranteed l2 Lipschitz constant), which the
certifier multiplies along the model's structure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.nn.cache import EvalCache


class PaddingChannels(nn.Module):
    """Zero-pad channels C_in -> C_out (an isometry: norms are kept)."""

    lipschitz_bound = 1.0

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_channels - x.shape[1]
        if extra < 0:
            raise ValueError(f"PaddingChannels({self.out_channels}) got {x.shape[1]} channels; it only adds channels")
        return F.pad(x, (0, 0, 0, 0, 0, extra))


class LipPool(nn.Module):
    """Sum of each k x k block divided by k (AvgPool2d(k, divisor_override=k)): 1-Lipschitz in l2.

    |sum of k^2 values| / k <= sqrt(sum of squares) by Cauchy-Schwarz, blocks do not overlap.
    """

    lipschitz_bound = 1.0

    def __init__(self, kernel_size: int = 4) -> None:
        super().__init__()
        self.k = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.k or x.shape[-2] % self.k:
            raise ValueError(f"LipPool({self.k}) needs H and W divisible by {self.k}, got {tuple(x.shape[-2:])}")
        return F.avg_pool2d(x, self.k, divisor_override=self.k)


class Truncate(nn.Module):
    """Keep the first ``n`` coordinates (a coordinate projection: 1-Lipschitz). LipSim's last layer."""

    lipschitz_bound = 1.0

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n]


class GroupSort2(nn.Module):
    """MaxMin activation on channel pairs (gradient-norm preserving, 1-Lipschitz)."""

    lipschitz_bound = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def OrthoLinear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:  # noqa: N802
    """A (semi-)orthogonal linear map: an isometry when out >= in, else a co-isometry.

    Uses torch's exact orthogonal parametrization (Householder products): no iterative
    orthogonalisation and no state mutated in ``forward``, so outputs are deterministic.
    """
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(in_features, out_features, bias=bias))
    layer.lipschitz_bound = 1.0
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


class OrthoConvBlock(nn.Module):
    """An orthogonal convolution (orthogonium's AOC, circular padding) then MaxMin. Its bound is derived:
    the exact norm of the circular convolution at the input size ``spatial`` (set by the owning network).

    In eval mode the orthogonalised kernel is computed once (float32, from the stored parameters) and reused
    until the stored kernel parameter changes, so the bound and every forward, float32 or the certifier's
    float64, use the same tensor (orthogonium's power iteration moves its vectors on every evaluation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.act = OrthoConv2d(channels, channels), GroupSort2()
        self.spatial: int | None = None
        self._kernel: tuple[tuple, torch.Tensor] | None = None

    def kernel(self) -> torch.Tensor:
        """The (out, in, k, k) kernel the block applies."""
        if self.training or torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            self._kernel = None
            return self.conv.weight
        original = self.conv.parametrizations.weight.original
        key = (id(original), original._version, original.data_ptr(), original.device)
        if self._kernel is None or self._kernel[0] != key:
            with torch.no_grad():
                self._kernel = (key, self.conv.weight.detach().float())
        return self._kernel[1]

    def rounding_weights(self) -> list[torch.Tensor]:
        return [self.kernel()]

    def rounding_biases(self) -> list[torch.Tensor]:
        return [] if self.conv.bias is None else [self.conv.bias]

    def lipschitz_bound(self) -> float:
        from robustsim.nn.spectral import conv_operator_norm

        if self.spatial is None:
            raise RuntimeError("OrthoConvBlock needs its input size to prove its bound: set .spatial")
        with torch.no_grad():
            return max(1.0, float(conv_operator_norm(self.kernel().double(), self.spatial, circular=True)))

    def train(self, mode: bool = True):
        self._kernel = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.kernel().to(x.dtype)
        b = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
        p = w.shape[-1] // 2
        return self.act(F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w, b))


class Projection(EvalCache):
    """1-Lipschitz projection to the embedding width: a semi-orthogonal matrix, no bias.

    The used matrix is the Q factor of a reduced QR of the free parameter (of its transpose when
    the map is wide): orthonormal columns (isometry) or rows (co-isometry) up to float rounding
    (~1e-6), with an O(n k^2) forward and backward, where a Householder parametrization of a
    2560 x 256 map costs ~100x more per training step. Cached in eval mode (:class:`EvalCache`).
    """

    lipschitz_bound = 1.0

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.orthogonal_(self.weight)

    def semi_orthogonal(self) -> torch.Tensor:
        w = self.weight
        if w.shape[0] >= w.shape[1]:
            return torch.linalg.qr(w).Q
        return torch.linalg.qr(w.T).Q.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._cached(self.semi_orthogonal), self.bias)
