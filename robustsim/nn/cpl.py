"""CPL (Meunier et al. 2022): convex potential layers h(x) = x - 2 / ||W||^2 W relu(W^T x + b).

The gradient step of a convex potential with step 2 / ||W||_2^2 is 1-Lipschitz. Here ||W||_2 is computed,
not estimated, whenever the layer is evaluated: exactly (largest singular value) for a linear layer; for a
'same' zero-padded convolution as the rigorous bound of :func:`robustsim.nn.spectral.conv_operator_norm` at
the layer's input size (``spatial``, set by the network that owns the layer). So in eval mode the layer is
1-Lipschitz for every weight (the scale is cached); ``lipschitz_bound()`` re-derives that in float64.
Training steps use a power-iteration estimate instead (two iterations per step from vectors kept between
steps, times 1.02): it tracks the exact norm closely and costs a fraction of a singular value decomposition.
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
from robustsim.nn.rounding import (
    Terms,
    absolute,
    bias_norm,
    gamma,
    local_dtype,
    memo,
    unit_of,
    upper_norms,
)
from robustsim.nn.spectral import abs_conv_norm, conv_norm, conv_operator_norm, matrix_norm

POWER_STEPS = 2
MARGIN = 1.02


class _CPLBase(Derived):
    def _norm(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _estimate(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def depends_on_training(self) -> bool:
        """While training (unfrozen) the scale is a power-iteration estimate, not the exact norm eval mode uses."""
        return not self.frozen

    def scale(self) -> torch.Tensor:
        """2 / ||W||^2: exact (the applied tensor) in eval mode, a power-iteration estimate while training."""
        if self.training and not self.frozen:
            return 2.0 / (MARGIN * self._estimate()).pow(2).clamp_min(1e-12)
        return self.applied()

    def _derive(self) -> torch.Tensor:
        return 2.0 / self._norm(self.weight).pow(2).clamp_min(1e-12)

    def _derived_shape(self) -> tuple[int, ...]:
        return ()

    def lipschitz_bound(self) -> float:
        """max(1, (scale / 2) ||W||^2 * 2 - 1), with ||W|| recomputed in float64: the Jacobian I - s W D W^T
        (0 <= D <= I) has eigenvalues in [1 - s ||W||^2, 1]."""
        with torch.no_grad():
            s = float(self.scale().double())
            norm = float(self._norm(self.weight.detach().double())) * SAFE
        return max(1.0, s * norm * norm - 1.0)

    def _cpl_terms(self, n1: int, n2: int, norm_w: float, abs_w: float, bias: float, unit: float) -> Terms:
        """h = x - s W^T relu(W x + b): the pre-activation errs by g1 (|| |W| || ||x|| + ||b||), carried by ||W||;
        W^T relu(.) adds g2 || |W| || ||relu(.)|| (||relu(.)|| <= ||W|| ||x|| + ||b||); the product by the applied
        scale s adds u s ||W^T relu(.)||; the difference u ||h||. ``a`` also covers the Lipschitz constant of
        :meth:`rounding_local` in x."""
        s = float(self.scale().detach().double())
        g1, g2 = gamma(n1, unit), gamma(n2, unit)
        relu_moves = norm_w + g1 * abs_w
        per_x = norm_w * g1 * abs_w + (g2 + unit * (1 + g2)) * abs_w * relu_moves
        per_b = norm_w * g1 + g2 * abs_w + unit * norm_w
        return s * per_x, unit, s * per_b * bias

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _post(self, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _weight_norm(self, in_shape: tuple[int, ...]) -> float:  # pragma: no cover
        raise NotImplementedError

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        """Componentwise on the recorded input x (as SLL's): v = |W| |x| + |b|, the pre-activation errs by e1 = g1 v,
        carried by ||W||; the computed relu output is at most relu(z) + e1 and W^T times it errs by g2 |W^T| times
        it; the product by s adds u s |W^T r| (1 + g2); the difference is the terms' ``c``."""
        n1, n2 = self.weight[0].numel() + 1, self._fan_out()
        g1, g2 = gamma(n1, unit), gamma(n2, unit)
        dt = local_dtype(x)
        uc = unit_of(dt, x.device)
        w, b = self.weight.detach(), self.bias.detach()
        v = self._pre(absolute(x, dt), absolute(w, dt), absolute(b, dt))
        z = self._pre(x.detach().to(dt), w.to(dt), b.to(dt))
        r_up = F.relu(z) + ((g1 + gamma(n1, uc)) / (1 - gamma(n1 + 1, uc))) * v
        post = upper_norms(self._post(r_up, absolute(w, dt)), n2 + 2)
        s = float(self.scale().detach().double())
        return s * (self._weight_norm(tuple(x.shape[1:])) * g1 * upper_norms(v, n1 + 1) + (g2 + unit * (1 + g2)) * post)

    def _fan_out(self) -> int:
        w = self.weight
        return w.shape[0] * (w[0, 0].numel() if w.dim() == 4 else 1)


class CPLLinear(_CPLBase):
    """CPL on (B, features) with inner width ``inner``."""

    def __init__(self, features: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or features
        self.weight = nn.Parameter(torch.empty(inner, features))
        self.bias = nn.Parameter(torch.zeros(inner))
        nn.init.xavier_normal_(self.weight)
        self.register_buffer("u", F.normalize(torch.randn(features), dim=0), persistent=False)

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        return matrix_norm(weight)

    def _estimate(self) -> torch.Tensor:
        with torch.no_grad():
            u = self.u
            for _ in range(POWER_STEPS):
                u = F.normalize(self.weight.T @ (self.weight @ u), dim=0)
            self.u.copy_(u)
        return (self.weight @ u).norm()  # the local copy: later calls update the buffer in place

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        def compute() -> Terms:
            w = self.weight.detach()
            return self._cpl_terms(
                w.shape[1] + 1, w.shape[0], spectral_norm(w), spectral_norm(w.abs()), bias_norm(self.bias), unit
            )

        return memo(self, (in_shape, out_shape), unit, compute)

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    def _post(self, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(r, w.T)

    def _weight_norm(self, in_shape: tuple[int, ...]) -> float:
        return memo(self, (in_shape, "norm"), 0.0, lambda: (spectral_norm(self.weight),))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.scale() * F.linear(F.relu(F.linear(x, self.weight, self.bias)), self.weight.T)


class CPLConv2d(_CPLBase):
    """CPL convolution (zero 'same' padding) on (B, C, n, n); ``spatial`` = n (needed for the norm)."""

    def __init__(
        self, channels: int, inner: int | None = None, kernel_size: int = 3, spatial: int | None = None
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise InputError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        inner = inner or channels
        self.padding, self.spatial = kernel_size // 2, spatial
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(inner))
        nn.init.kaiming_normal_(self.weight, a=math.sqrt(5))
        self.u: torch.Tensor | None = None  # power-iteration vectors, one per frequency (training only)

    def _grid(self) -> int:
        if self.spatial is None:
            raise RuntimeError("CPLConv2d needs its input size: set layer.spatial (LipSimNet does)")
        return self.spatial + self.weight.shape[-1] - 1

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        if self.spatial is None:
            raise RuntimeError("CPLConv2d needs its input size: set layer.spatial (LipSimNet does)")
        return conv_operator_norm(weight, self.spatial)

    def _estimate(self) -> torch.Tensor:
        m = self._grid()
        k = self.weight.shape[-1]
        spectrum = (
            torch.fft.fft2(F.pad(self.weight, (0, m - k, 0, m - k)))
            .permute(2, 3, 0, 1)
            .reshape(m * m, *self.weight.shape[:2])
        )
        with torch.no_grad():
            if self.u is None or self.u.shape != (m * m, spectrum.shape[2]) or self.u.device != spectrum.device:
                self.u = F.normalize(
                    torch.randn(m * m, spectrum.shape[2], dtype=spectrum.dtype, device=spectrum.device), dim=1
                )
            u = self.u
            for _ in range(POWER_STEPS):
                v = torch.einsum("foi,fi->fo", spectrum, u)
                u = F.normalize(torch.einsum("foi,fo->fi", spectrum.conj(), v), dim=1)
            self.u = u
        return torch.einsum("foi,fi->fo", spectrum, self.u).norm(dim=1).max()

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        def compute() -> Terms:
            w, hw = self.weight.detach(), in_shape[-2:]
            n1, n2 = w[0].numel() + 1, w.shape[0] * w.shape[2] * w.shape[3]
            return self._cpl_terms(
                n1, n2, conv_norm(w, hw), abs_conv_norm(w), bias_norm(self.bias, hw[0] * hw[1]), unit
            )

        return memo(self, (in_shape, out_shape), unit, compute)

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return conv64.conv2d(x, w, b, self.padding)

    def _post(self, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv64.conv_transpose2d(r, w, self.padding)

    def _weight_norm(self, in_shape: tuple[int, ...]) -> float:
        return memo(self, (in_shape, "norm"), 0.0, lambda: (conv_norm(self.weight, in_shape[-2:]),))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial is not None and x.shape[-1] != self.spatial:
            raise InputError(f"CPLConv2d was sized for {self.spatial} px inputs, got {x.shape[-1]} px")
        res = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding))
        return x - self.scale() * F.conv_transpose2d(res, self.weight, padding=self.padding)
