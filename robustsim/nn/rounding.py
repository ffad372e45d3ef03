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
import torch.nn.functional as F
from torch import nn

from robustsim.nn.bounds import SAFE, applied_parameter, exact_type, one_thread, pad_multiplicity, spectral_norm
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


def memo(module: nn.Module, shapes: tuple, unit: float, compute: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
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
    w = applied_parameter(m).detach().double()
    n = w.shape[1] + (m.bias is not None)
    return affine_terms(n, spectral_norm(w.abs()), bias_norm(m.bias), unit)


def _conv(m: nn.Conv2d, out_shape: tuple[int, ...], unit: float) -> Terms:
    w = applied_parameter(m).detach()
    n = w.shape[1] * w.shape[2] * w.shape[3] + (m.bias is not None)
    groups = w.split(w.shape[0] // m.groups, dim=0)
    reads = pad_multiplicity(m) ** 2 if m.padding_mode != "zeros" else None
    norm = max(abs_conv_norm(g) if reads is None or reads.max() <= 1 else _schur_abs_norm(g, reads) for g in groups)
    return affine_terms(n, norm, bias_norm(m.bias, math.prod(out_shape[1:])), unit)


def _schur_abs_norm(kernel: torch.Tensor, reads: torch.Tensor) -> float:
    """The l2 norm of the convolution by |kernel| whose tap t reads one input pixel for up to ``reads[t]`` outputs
    (a repeating pad), by Schur's test on the nonnegative operator: sqrt(max row sum x max column sum), the rows
    summing |K| over taps and input channels, the columns over taps (each counted reads[t] times) and outputs."""
    k = kernel.detach().double().abs()
    rows = float(k.sum((1, 2, 3)).max())
    cols = float((k * reads.to(k)[None, None]).sum((0, 2, 3)).max())
    return math.sqrt(rows * cols)


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


def local_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the componentwise bounds are evaluated in: float64 for a float64 network, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def arithmetic_unit(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff of float32 / float64 arithmetic on ``device`` (TF32's 2^-11 for float32 on CUDA while TF32
    is allowed)."""
    if dtype == torch.float64:
        return 2.0**-53
    cuda_tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return 2.0**-11 if device.type == "cuda" and cuda_tf32 else 2.0**-24


def absolute(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).abs()


def upper_norms(v: torch.Tensor, ops: int) -> torch.Tensor:
    """(B,) float64 upper bounds on the l2 norms of the rows of the exact values that the nonnegative tensor ``v``
    computes: from exact nonnegative inputs by products and sums at most ``ops`` rounded operations deep per entry
    (a sum of n terms counts n), each computed entry is at least (1 - gamma_ops) of its exact value; the norm's own
    n squares, sum and root err by gamma_{n+2} more."""
    u = arithmetic_unit(v.dtype, v.device)
    norm = torch.linalg.vector_norm(v.flatten(1), dim=1).double()
    return norm / ((1 - gamma(v[0].numel() + 2, u)) * (1 - gamma(ops, u)))


def bias_view(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bias.view(1, -1, *[1] * (like.dim() - 2))


def affine_sums(apply: Callable, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """|W| |x| + |b| for the linear map ``apply(x, W)`` (a matrix product or a convolution), computed in
    :func:`local_dtype` (rounded down by at most gamma_{n+1}: :func:`upper_norms`): each entry is the sum of the
    absolute values of the terms the layer adds up for it."""
    dt = local_dtype(x)
    v = apply(absolute(x, dt), absolute(weight, dt))
    return v if bias is None else v + bias_view(absolute(bias, dt), v)


def affine_local(apply: Callable, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, unit: float):
    """(B,) gamma_n || |W| |x| + |b| || on the computed input ``x``: y = W x + b computed in any order errs in each
    entry by at most gamma_n times the sum of its n terms' absolute values (the bias one of them), so the error's
    norm is at most this. As a function of x it is (gamma_n || |W| ||)-Lipschitz: the ``a`` of
    :func:`affine_terms`, which keeps the ball analysis of :mod:`robustsim.certify.rounding` valid."""
    n = weight[0].numel() + (bias is not None)
    return gamma(n, unit) * upper_norms(affine_sums(apply, x, weight, bias), n + 1)


def module_local(module: nn.Module, x: torch.Tensor, out: torch.Tensor, unit: float) -> torch.Tensor | None:
    """(B,) the componentwise bound of one module's own rounding on its recorded input (its ``rounding_local``, or
    the rule for its exact torch type), or None (the module's :func:`module_terms` then serve). It replaces the
    ``a ||in|| + d`` part of the terms, is never above it by more than float64 noise and is Lipschitz in the input
    with the same ``a``."""
    own = getattr(module, "rounding_local", None)
    if callable(own):
        return own(x, out, unit)
    t = exact_type(module)
    if t is nn.Linear:
        return affine_local(F.linear, x, applied_parameter(module), module.bias, unit)
    if t is nn.Conv2d:
        weight = applied_parameter(module)
        return affine_local(lambda a, w: module._conv_forward(a, w, None), x, weight, module.bias, unit)
    return None


def module_terms(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms | None:
    """The rounding terms of one module (its own ``rounding_terms`` or a rule for its exact torch type); None
    when robustsim has no rule for it. Shapes exclude the batch."""
    own = getattr(module, "rounding_terms", None)
    if callable(own):
        return own(tuple(in_shape), tuple(out_shape), unit)
    t, shapes = exact_type(module), (tuple(in_shape), tuple(out_shape))
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
