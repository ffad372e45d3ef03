"""How much floating-point rounding one layer adds to its output: ``(a, c, d)`` with

    ||computed output - exact output of the computed input|| <= a ||input|| + c ||output|| + d

per sample, for the unit roundoff ``u`` of the arithmetic that runs (2^-24 for float32). The model is the
standard one: every +, x, / of two numbers rounds to nearest with relative error <= u, and an inner product of
n terms errs by at most gamma_n sum |w_i x_i| (gamma_n = n u / (1 - n u)), for any summation order, blocking or
fused multiply-add (so every convolution or matrix product computed as sums of products: PyTorch's CPU kernels,
cuBLAS and cuDNN's implicit-GEMM algorithms; not Winograd or FFT convolutions). ``sum |w_i x_i|`` is bounded
with the l2 norm of the map with entries |w|. Layers with structure (SLL, CPL, ...) implement
``rounding_terms(in_shape, out_shape, unit)`` (shapes without the batch); :mod:`robustsim.nn.rules` holds the
rules for torch's functions. Coefficients depend on the weights only: memoised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from robustsim.nn.bounds import SAFE, one_thread

Terms = tuple[float, float, float]
EXACT: Terms = (0.0, 0.0, 0.0)

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


def local_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the componentwise bounds are evaluated in: float64 for a float64 network, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


UNITS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def unit_of(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff of arithmetic in ``dtype`` on ``device`` (TF32's 2^-11 for float32 on CUDA while TF32 is
    allowed: PyTorch's default for convolutions)."""
    if dtype == torch.float32 and device.type == "cuda":
        if torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32:
            return 2.0**-11
    return UNITS.get(dtype, 2.0**-24)


def absolute(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).abs()


def upper_norms(v: torch.Tensor, ops: int) -> torch.Tensor:
    """(B,) float64 upper bounds on the l2 norms of the rows of the exact values that the nonnegative tensor ``v``
    computes: from exact nonnegative inputs by products and sums at most ``ops`` rounded operations deep per entry
    (a sum of n terms counts n), each computed entry is at least (1 - gamma_ops) of its exact value; the norm's own
    n squares, sum and root err by gamma_{n+2} more."""
    u = unit_of(v.dtype, v.device)
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
    """(B,) the componentwise bound of a layer's own rounding on its recorded input (its ``rounding_local``), or None
    (its :func:`module_terms` then serve). It replaces the ``a ||in|| + d`` part of the terms, is never above it by
    more than float64 noise and is Lipschitz in the input with the same ``a``."""
    own = getattr(module, "rounding_local", None)
    return own(x, out, unit) if callable(own) else None


def module_terms(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], unit: float) -> Terms | None:
    """A layer's own rounding terms (``rounding_terms``), or None. Shapes exclude the batch."""
    own = getattr(module, "rounding_terms", None)
    return own(tuple(in_shape), tuple(out_shape), unit) if callable(own) else None
