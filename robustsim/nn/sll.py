"""SDP-based Lipschitz layers (SLL; Araujo et al. 2023), 1-Lipschitz for any weights.

h(x) = x - 2 W T^{-1} relu(W^T x + b), T = diag(t), t_i = sum_j |W^T W|_ij q_j / q_i, q = exp(log_q).
For convolutions W^T W is the kernel's self-correlation summed over spatial offsets. The output map
uses the folded weight K = -2 W T^{-1} (the rescaling and the minus sign live in the kernel), so a
forward is h(x) = x + K relu(W^T x + b): one transposed convolution (or one ``addmm``) after the
activation, with nothing elementwise in between. K depends on the weights only: it is the layer's
:meth:`~robustsim.nn.cache.Derived.applied` tensor (memoised in eval mode, stored when frozen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.nn.cache import Derived


class _SLLBase(Derived):
    lipschitz_bound: float = 1.0

    def _gram(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rescaling(self) -> torch.Tensor:
        """2 / t (shape (inner,)), computed from the weights."""
        q = self.log_q.exp()
        t = (self._gram().abs() * q[None, :] / q[:, None]).sum(1)
        return 2.0 / t.clamp_min(1e-12)

    def rounding_weights(self) -> list[torch.Tensor]:
        """What the forward multiplies by: ``weight`` and the folded kernel (for rounding bounds)."""
        return [self.weight, self.folded()]

    def rounding_biases(self) -> list[torch.Tensor]:
        return [self.bias]

    def folded(self) -> torch.Tensor:
        """K = -(2 / t) W, the output map with the rescaling and sign folded in (the applied tensor)."""
        return self.applied()

    def _derive(self) -> torch.Tensor:
        r = self.rescaling()
        return -(self.weight * r.view(-1, *[1] * (self.weight.dim() - 1)))


class SLLLinear(_SLLBase):
    """Residual SLL layer on (B, features) with an inner width ``inner`` (default = features)."""

    def __init__(self, features: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or features
        self.weight = nn.Parameter(torch.empty(inner, features))
        self.bias = nn.Parameter(torch.empty(inner))
        self.log_q = nn.Parameter(torch.zeros(inner))
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(features)
        nn.init.uniform_(self.bias, -bound, bound)

    def _gram(self) -> torch.Tensor:
        return self.weight @ self.weight.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(x, F.relu(F.linear(x, self.weight, self.bias)), self.folded())


class SLLConv2d(_SLLBase):
    """Residual SLL convolution on (B, C, H, W), kernel ``kernel_size`` with zero padding (size kept)."""

    def __init__(self, channels: int, inner: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        inner = inner or channels
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(inner))
        self.log_q = nn.Parameter(torch.zeros(inner))
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def _gram(self) -> torch.Tensor:
        k = self.weight.shape[-1]
        # (inner, inner, 2k-1, 2k-1): correlation of every kernel pair at every offset
        return (
            F.conv2d(self.weight, self.weight, padding=k - 1)
            .flatten(1)
            .view(self.weight.shape[0], self.weight.shape[0], -1)
            .abs()
            .sum(-1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding))
        return x + F.conv_transpose2d(res, self.folded(), padding=self.padding)
