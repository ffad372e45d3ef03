"""Lipschitz bounds (l2) a network's structure proves, from the weights its forward applies.

:func:`lipschitz_bound` multiplies bounds along ``nn.Sequential`` compositions and asks each module for its own:

- robustsim's layers (``lipschitz_bound()``): derived from the tensors they apply (the stored or memoised
  orthogonal kernel, the SLL folded kernel, the AOL rescaled weight, ...), evaluated in float64;
- a module that carries a ``lipschitz_bound`` (a number or a method) of its own: the user's proof, taken as given;
- torch modules, by **exact type** only, with their parameters read: ``ReLU``, ``Identity``, ``Flatten``,
  ``Unflatten``, ``Tanh``, ``Hardtanh`` and eval-mode ``Dropout`` (1), ``LeakyReLU`` (max(1, |slope|)),
  ``Sigmoid`` (1/4), ``Linear`` (the float64 spectral norm of its weight), ``Conv2d`` with zero or circular
  padding (a rigorous bound from its kernel), eval-mode ``BatchNorm1d/2d`` (max |gamma| / sqrt(var + eps)).

Anything else (a subclass of ``ReLU``, a ``Sequential`` subclass with its own forward, an unknown module) has no
guarantee and is refused with one line. Norms computed in float64 are multiplied by :data:`SAFE` to cover the
float64 computation's own error (relative ~1e-13).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from robustsim.errors import RobustsimError

SAFE = 1.0 + 1e-9


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Float64 norms (SVD, FFT) on one thread for the block: LAPACK's last bits depend on the thread count, and a
    bound, hence every radius built on it, must come out the same in every process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def round_up(value: float, digits: int = 10) -> float:
    """The smallest float >= ``value`` written with ``digits`` significant digits (rounded toward +inf): a bound
    printed on a card that no CPU's last-ulp difference in an SVD or FFT can exceed."""
    if not math.isfinite(value) or value == 0:
        return value
    from decimal import ROUND_CEILING, Context, Decimal

    text = Context(prec=digits, rounding=ROUND_CEILING).create_decimal(Decimal(value))
    out = float(text)
    return out if out >= value else math.nextafter(out, math.inf)


_ONE = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Tanh, nn.Hardtanh, nn.ReLU6)


def spectral_norm(w: torch.Tensor) -> float:
    """The l2 norm of a matrix (largest singular value), in float64, with the float64 margin."""
    with one_thread():
        return float(torch.linalg.matrix_norm(w.detach().double(), ord=2)) * SAFE


def tap_norm_sum(kernel: torch.Tensor, groups: int = 1) -> float:
    """Sum over kernel taps of each tap's channel matrix norm (max over groups): a bound on the l2 norm of the
    convolution with this kernel for any input size, stride, dilation and zero padding."""
    k = kernel.detach().double()
    out = k.shape[0] // groups
    with one_thread():
        return max(float(torch.linalg.matrix_norm(p.permute(2, 3, 0, 1), ord=2).sum()) for p in k.split(out)) * SAFE


def conv_bound(conv: nn.Conv2d, kernel: torch.Tensor | None = None) -> float:
    """A bound on the l2 norm of ``conv`` (its kernel, or ``kernel``): zero padding (any stride, dilation, groups)
    or circular padding with stride 1 and a known-shape kernel; other paddings are refused."""
    k = conv.weight if kernel is None else kernel
    if conv.padding_mode == "zeros":
        return tap_norm_sum(k, conv.groups)
    if conv.padding_mode == "circular" and conv.stride in ((1, 1), 1) and conv.groups == 1:
        return tap_norm_sum(k)  # each tap is a cyclic shift (an isometry) times its channel matrix
    raise RobustsimError(
        f"Conv2d with padding_mode={conv.padding_mode!r} has no proven bound (reflect / replicate padding copies "
        "pixels); use zero or circular padding"
    )


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> float:
    if m.training or m.running_var is None:
        raise RobustsimError(f"{type(m).__name__} in training mode has no fixed bound; call .eval() first")
    gamma = m.weight.detach().double() if m.weight is not None else torch.ones_like(m.running_var, dtype=torch.float64)
    return float((gamma.abs() / torch.sqrt(m.running_var.double() + m.eps)).max()) * SAFE


def _leaf_bound(module: nn.Module) -> float | None:
    t = type(module)
    if t in _ONE:
        return 1.0
    if t is nn.Dropout:
        return 1.0 if not module.training else 1.0 / (1.0 - module.p)
    if t is nn.LeakyReLU:
        return max(1.0, abs(float(module.negative_slope)))
    if t is nn.Sigmoid:
        return 0.25
    if t is nn.Linear:
        return spectral_norm(module.weight)
    if t is nn.Conv2d:
        return conv_bound(module)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _batchnorm(module)
    return None


def lipschitz_bound(module: nn.Module) -> float:
    """The l2 Lipschitz constant the structure guarantees (module docstring). Raises RobustsimError for a module
    with no guarantee (composition by ``nn.Sequential`` only)."""
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        with one_thread():
            own = own()
    if isinstance(own, (int, float)) and not isinstance(own, bool):
        if not math.isfinite(own) or own < 0:
            raise RobustsimError(f"{type(module).__name__} declares lipschitz_bound={own}; it must be finite >= 0")
        return float(own)
    if type(module) is nn.Sequential:
        bound = 1.0
        for child in module:
            bound *= lipschitz_bound(child)
        return bound
    leaf = _leaf_bound(module)
    if leaf is not None:
        return leaf
    raise RobustsimError(
        f"{type(module).__name__} has no Lipschitz guarantee; build the model from robustsim.nn layers or "
        "torch modules of the listed exact types, or set a proven `lipschitz_bound` attribute on it"
    )
