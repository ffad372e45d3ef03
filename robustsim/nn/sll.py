"""SDP-based Lipschitz layers (SLL; Araujo et al. 2023), 1-Lipschitz for any weights.

h(x) = x - 2 W T^{-1} relu(W^T x + b), T = diag(t), t_i = sum_j |W^T W|_ij q_j / q_i, q = exp(log_q).
For convolutions W^T W is the kernel's self-correlation summed over spatial offsets. The output map
uses the folded weight K = -2 W T^{-1} (the rescaling and the minus sign live in the kernel), so a
forward is h(x) = x + K relu(W^T x + b): one transposed convolution (or one ``addmm``) after the
activation, with nothing elementwise in between. K depends on the weights only: it is the layer's
:meth:`~robustsim.nn.derived.Derived.applied` tensor (memoised in eval mode, stored when frozen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import InputError
from robustsim.nn import conv64
from robustsim.nn.bounds import SAFE, spectral_norm, tap_norm_sum
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
from robustsim.nn.spectral import abs_conv_norm, conv_norm


class _SLLBase(Derived):
    def _gram(self, w: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _norm(self, w: torch.Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _t(self, w: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        q = log_q.exp()
        return (self._gram(w).abs() * q[None, :] / q[:, None]).sum(1)

    def rescaling(self) -> torch.Tensor:
        """2 / t (shape (inner,)), computed from the weights."""
        return 2.0 / self._t(self.weight, self.log_q).clamp_min(1e-12)

    def lipschitz_bound(self) -> float:
        """The bound of the map the layer applies, from its weight W and its applied folded kernel K.

        With t' >= the exact t of W (t computed in float64 and widened by 1e-9, more than that computation's
        error), T' - W W^T >= 0, so h*(x) = x - 2 W T'^-1 relu(W^T x + b) is 1-Lipschitz (SLL's theorem, for any
        W, b, q). The applied h(x) = x + K relu(W^T x + b) differs from it by (K - K*) relu(W^T x + b), whose
        Lipschitz constant is at most ||K - K*|| ||W||; so L <= 1 + ||K - K*|| ||W||."""
        with torch.no_grad():
            w = self.weight.detach().double()
            t = self._t(w, self.log_q.detach().double()) * (1 + 1e-9)
            k_star = -(w * (2.0 / t.clamp_min(1e-300)).view(-1, *[1] * (w.dim() - 1)))
            k = self.applied().detach().double()
            gap = self._norm(k - k_star) + 1e-12 * self._norm(k)  # + float64 rounding of k_star
            return 1.0 + gap * self._norm(w) * SAFE

    def _residual_terms(self, n1: int, n2: int, norms: tuple[float, float, float, float], bias: float, unit: float):
        """h = x + K relu(W^T x + b): the pre-activation errs by g1 (|| |W| || ||x|| + ||b||), which K carries by
        ||K||; K relu(.) adds g2 || |K| || ||relu(.)||, ||relu(.)|| <= ||W|| ||x|| + ||b||; the sum adds u ||h||.
        ``a`` also covers the Lipschitz constant of :meth:`rounding_local` in x (its relu term moves with ||W||,
        its pre-activation term with || |W| ||)."""
        norm_w, abs_w, norm_k, abs_k = norms
        g1, g2 = gamma(n1, unit), gamma(n2, unit)
        a = norm_k * g1 * abs_w + g2 * abs_k * (norm_w + g1 * abs_w)
        return a, unit, (norm_k * g1 + g2 * abs_k) * bias

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _post(self, r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _operator_norms(self, in_shape: tuple[int, ...], unit: float) -> tuple[float, float, float, float]:
        """(||W||, || |W| ||, ||K||, || |K| ||) at this input size (memoised with the terms)."""
        raise NotImplementedError  # pragma: no cover

    def rounding_local(self, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor:
        """Componentwise on the recorded input x: with v = |W^T| |x| + |b| (the pre-activation's sums of absolute
        terms), the computed pre-activation errs by at most e1 = g1 v in each entry, which relu keeps and K carries
        by ||K|| ||e1||; the computed relu output is at most relu(z) + e1 (z the exact pre-activation) and K times it
        errs by at most g2 |K| times it. The sum x + K r adds u ||h|| (the ``c`` of the terms). The exact function
        ||K|| g1 ||v|| + g2 || |K| (relu(z) + g1 v) || is Lipschitz in x with the terms' ``a``; it is evaluated in
        :func:`~robustsim.nn.rounding.local_dtype` and rounded up (z computed there errs by gamma_{n1} v too)."""
        n1, n2 = self.weight[0].numel() + 1, self._fan_out()
        g1, g2 = gamma(n1, unit), gamma(n2, unit)
        dt = local_dtype(x)
        uc = unit_of(dt, x.device)
        w, b, k = self.weight.detach(), self.bias.detach(), self.folded().detach()
        v = self._pre(absolute(x, dt), absolute(w, dt), absolute(b, dt))
        z = self._pre(x.detach().to(dt), w.to(dt), b.to(dt))
        r_up = F.relu(z) + ((g1 + gamma(n1, uc)) / (1 - gamma(n1 + 1, uc))) * v
        _, _, norm_k, _ = self._operator_norms(tuple(x.shape[1:]), unit)
        post = self._post(r_up, absolute(k, dt))
        return norm_k * g1 * upper_norms(v, n1 + 1) + g2 * upper_norms(post, n2 + 2)

    def _fan_out(self) -> int:
        """Terms of each entry of K relu(.) (the relu entries it sums, and the residual x)."""
        k = self.weight
        return k.shape[0] * (k[0, 0].numel() if k.dim() == 4 else 1) + 1

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

    def _gram(self, w: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if w is None else w
        return w @ w.T

    def _norm(self, w: torch.Tensor) -> float:
        return spectral_norm(w)

    def _operator_norms(self, in_shape: tuple[int, ...], unit: float) -> tuple[float, float, float, float]:
        def compute() -> tuple[float, float, float, float]:
            w, k = self.weight.detach(), self.folded().detach()
            return spectral_norm(w), spectral_norm(w.abs()), spectral_norm(k), spectral_norm(k.abs())

        return memo(self, (in_shape, "norms"), 0.0, compute)

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """See :meth:`_residual_terms` (robustsim.nn.rounding explains the model)."""

        def compute() -> Terms:
            norms = self._operator_norms(in_shape, unit)
            return self._residual_terms(self.weight.shape[1] + 1, self._fan_out(), norms, bias_norm(self.bias), unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    def _post(self, r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return r @ k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(x, F.relu(F.linear(x, self.weight, self.bias)), self.folded())


class SLLConv2d(_SLLBase):
    """Residual SLL convolution on (B, C, H, W), kernel ``kernel_size`` with zero padding (size kept)."""

    def __init__(self, channels: int, inner: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise InputError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        inner = inner or channels
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(inner))
        self.log_q = nn.Parameter(torch.zeros(inner))
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def _gram(self, w: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if w is None else w
        k = w.shape[-1]
        # (inner, inner, 2k-1, 2k-1): correlation of every kernel pair at every offset
        return F.conv2d(w, w, padding=k - 1).flatten(1).view(w.shape[0], w.shape[0], -1).abs().sum(-1)

    def _norm(self, w: torch.Tensor) -> float:
        return tap_norm_sum(w)

    def _operator_norms(self, in_shape: tuple[int, ...], unit: float) -> tuple[float, float, float, float]:
        def compute() -> tuple[float, float, float, float]:
            w, k, hw = self.weight.detach(), self.folded().detach(), in_shape[-2:]
            return conv_norm(w, hw), abs_conv_norm(w), conv_norm(k, hw), abs_conv_norm(k)

        return memo(self, (in_shape, "norms"), 0.0, compute)

    def rounding_terms(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms:
        """See :meth:`_residual_terms`, with the convolutions' norms at the input size."""

        def compute() -> Terms:
            norms, hw = self._operator_norms(in_shape, unit), in_shape[-2:]
            n1 = self.weight[0].numel() + 1
            return self._residual_terms(n1, self._fan_out(), norms, bias_norm(self.bias, hw[0] * hw[1]), unit)

        return memo(self, (in_shape, out_shape), unit, compute)

    def _pre(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return conv64.conv2d(x, w, b, self.padding)

    def _post(self, r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return conv64.conv_transpose2d(r, k, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(conv64.conv2d(x, self.weight, self.bias, self.padding))
        return x + conv64.conv_transpose2d(res, self.folded(), self.padding)
