"""Helpers for the bounds of the function that runs (:mod:`robustsim.nn.graph` records it, :mod:`robustsim.nn.rules`
bounds each call, :mod:`robustsim.nn.compose` composes): float64 norms on one thread, the hooks a proven leaf may
carry, and the modules whose output depends on training mode. Norms computed in float64 are multiplied by
:data:`SAFE` to cover the float64 computation's own error (relative ~1e-13).
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


def observer(hook):
    """Mark a forward hook as one that only reads (robustsim's rounding tape): :func:`check_hooks` lets it pass."""
    hook._robustsim_observer = True
    return hook


def check_hooks(module: nn.Module) -> None:
    """RobustsimError unless every forward hook of ``module`` is one whose effect robustsim accounts for: torch's
    hook-style spectral / weight norm (the weight it computes is what the forward applies) or a robustsim observer.
    Any other hook may change what the module computes, so a bound read off its tensors would speak of another
    function."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for kind, hooks in (("pre-hook", module._forward_pre_hooks), ("hook", module._forward_hooks)):
        for hook in hooks.values():
            if isinstance(hook, (SpectralNorm, WeightNorm)) or getattr(hook, "_robustsim_observer", False):
                continue
            what = getattr(hook, "__qualname__", type(hook).__name__)
            raise RobustsimError(
                f"{type(module).__name__} has a forward {kind} ({what}) that may change what it computes, so no "
                "bound read off its tensors covers it; remove the hook or use torch.nn.utils.parametrizations"
            )


def mode_dependent(module: nn.Module) -> bool:
    """Whether ``module``'s output, in its present mode, is not the function its eval mode computes: Dropout and
    the batch / instance norms in training mode, torch's spectral norm (hook or parametrization) taking power steps
    while training, and robustsim layers that say so (``depends_on_training``: CPL's training-time norm estimate, an
    unfrozen orthogonal convolution's moving power iteration)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd
    from torch.nn.modules.instancenorm import _InstanceNorm
    from torch.nn.utils.spectral_norm import SpectralNorm

    if not module.training:
        return False
    own = getattr(module, "depends_on_training", None)
    if own is not None:
        return bool(own() if callable(own) else own)
    if isinstance(module, _DropoutNd):
        return module.p > 0
    if isinstance(module, _BatchNorm) or (isinstance(module, _InstanceNorm) and module.track_running_stats):
        return True
    if any(isinstance(h, SpectralNorm) for h in module._forward_pre_hooks.values()):
        return True
    return type(module).__name__ == "_SpectralNorm"  # torch.nn.utils.parametrizations.spectral_norm's module


