"""How much floating-point rounding one layer adds to its output: ``(a, c, d)`` with

    ||computed output - exact output of the computed input|| <= a ||input|| + c ||output|| + d

per sample, for the unit roundoff ``u`` of the arithmetic that runs (2^-24 for float32). The model is the
standard one: every +, x, / of two numbers rounds to nearest with relative error <= u, and an inner product of
n terms errs by at most gamma_n sum |w_i x_i| (gamma_n = n u / (1 - n u)), for any summation order, blocking or
fused multiply-add (so every convolution or matrix product computed as sums of products: PyTorch's CPU kernels,
cuBLAS and cuDNN's implicit-GEMM algorithms; not Winograd or FFT convolutions). ``sum |w_i x_i|`` is bounded
with the l2 norm of the map with entries |w|. Layers with structure (SLL, CPL, ...) implement
``rounding_terms(in_shape, out_shape, unit)`` (shapes without the batch); :func:`module_terms` holds the rules
for the torch modules :func:`robustsim.nn.bounds.lipschitz_bound` accepts. Coefficients depend on the weights
only: memoised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from robustsim.nn.bounds import SAFE, one_thread, spectral_norm
from robustsim.nn.spectral import abs_conv_norm

Terms = tuple[float, float, float]
EXACT: Terms = (0.0, 0.0, 0.0)

#: modules whose forward rounds nothing (selection, padding, max / min, reshapes, ReLU)
_EXACT_TYPES = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Hardtanh, nn.ReLU6)


def gamma(n: int, unit: float) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of an n-term inner product (unit roundoff u)."""
    nu = n * unit
    if nu >= 1:
        return math.inf
    return nu / (1 - nu)


def memo(module: nn.Module, shapes: tuple, unit: float, compute: Callable[[], Terms]) -> Terms:
    """``compute()``, memoised on the module while its parameters and buffers are unchanged."""
    tensors = [*module.parameters(), *module.buffers()]
    key = (shapes, unit, tuple((t.data_ptr(), t._version, t.dtype) for t in tensors))
    cache = module.__dict__.setdefault("_rounding_terms", {})
    if key not in cache:
        if len(cache) >= 16:  # stale weights or many input sizes: start afresh
            cache.clear()
        with torch.no_grad(), one_thread():
            cache[key] = tuple(float(v) * SAFE for v in compute())
    return cache[key]


def bias_norm(bias: torch.Tensor | None, positions: int = 1) -> float:
    """||b|| over every position it is added at."""
    return 0.0 if bias is None else float(bias.detach().double().norm()) * math.sqrt(positions)


def affine_terms(n: int, abs_norm: float, bias: float, unit: float) -> Terms:
    """y = W x + b with n-term inner products (the bias one of them): gamma_n (|| |W| || ||x|| + ||b||)."""
    g = gamma(n, unit)
    return g * abs_norm, 0.0, g * bias


def _linear(m: nn.Linear, unit: float) -> Terms:
    w = m.weight.detach().double()
    n = w.shape[1] + (m.bias is not None)
    return affine_terms(n, spectral_norm(w.abs()), bias_norm(m.bias), unit)


def _conv(m: nn.Conv2d, out_shape: tuple[int, ...], unit: float) -> Terms:
    w = m.weight
    n = w.shape[1] * w.shape[2] * w.shape[3] + (m.bias is not None)
    groups = w.split(w.shape[0] // m.groups, dim=0)
    return affine_terms(n, max(abs_conv_norm(g) for g in groups), bias_norm(m.bias, math.prod(out_shape[1:])), unit)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...], unit: float) -> Terms:
    """PyTorch's eval batch norm computes alpha = gamma / sqrt(var + eps) and beta = bias - mean alpha (a few
    rounded operations each), then alpha x + beta: at most 8u |alpha| |x| + 4u |beta| per entry (generous)."""
    var = m.running_var.detach().double()
    g = m.weight.detach().double() if m.weight is not None else torch.ones_like(var)
    b = m.bias.detach().double() if m.bias is not None else torch.zeros_like(var)
    alpha = g / torch.sqrt(var + m.eps)
    beta = b - m.running_mean.detach().double() * alpha
    positions = math.prod(shape[1:]) if len(shape) > 1 else 1
    return 8 * unit * float(alpha.abs().max()), 0.0, 4 * unit * float(beta.norm()) * math.sqrt(positions)


def module_terms(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms | None:
    """The rounding terms of one module (its own ``rounding_terms`` or a rule for its exact torch type); None
    when robustsim has no rule for it. Shapes exclude the batch."""
    own = getattr(module, "rounding_terms", None)
    if callable(own):
        return own(tuple(in_shape), tuple(out_shape), unit)
    t, shapes = type(module), (tuple(in_shape), tuple(out_shape))
    if t in _EXACT_TYPES:
        return EXACT
    if t is nn.LeakyReLU:
        return 0.0, unit, 0.0  # the negative part is multiplied by the slope
    if t in (nn.Tanh, nn.Sigmoid):
        return 0.0, 8 * unit, 0.0  # elementwise libm functions: at most 4 ulp, assumed
    if t is nn.Linear:
        return memo(module, shapes, unit, lambda: _linear(module, unit))
    if t is nn.Conv2d:
        return memo(module, shapes, unit, lambda: _conv(module, tuple(out_shape), unit))
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        return memo(module, shapes, unit, lambda: _batchnorm(module, tuple(in_shape), unit))
    return None
