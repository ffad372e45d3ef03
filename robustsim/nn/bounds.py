"""Lipschitz bounds (l2) a network's structure proves, from the weights its forward applies.

:func:`lipschitz_bound` multiplies bounds along ``nn.Sequential`` compositions and asks each module for its own:

- robustsim's layers (``lipschitz_bound()``): derived from the tensors they apply (the stored or memoised
  orthogonal kernel, the SLL folded kernel, the AOL rescaled weight, ...), evaluated in float64;
- a module that carries a ``lipschitz_bound`` (a number or a method) of its own: the user's proof, taken as given;
- torch modules, by **exact type** only, with their parameters read: ``ReLU``, ``Identity``, ``Flatten``,
  ``Unflatten``, ``Tanh``, ``Hardtanh`` and eval-mode ``Dropout`` (1), ``LeakyReLU`` (max(1, |slope|)),
  ``Sigmoid`` (1/4), ``Linear`` (the float64 spectral norm of its weight), ``Conv2d`` with any padding (a
  rigorous bound from its kernel and how often its pad repeats a pixel), ``BatchNorm1d/2d`` (max |gamma| /
  sqrt(var + eps)). Weights are read as the forward applies them (parametrizations, torch's hook-style
  spectral / weight norm); any other forward hook is refused, and so is a network in training mode whose output
  depends on it (:func:`mode_dependent`: Dropout, batch norm, ...), by the certifier.

Anything else (a subclass of ``ReLU``, a ``Sequential`` subclass with its own forward, an unknown module) has no
guarantee and is refused with one line. Norms computed in float64 are multiplied by :data:`SAFE` to cover the
float64 computation's own error (relative ~1e-13).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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


def _axis_reads(size: int, pad: tuple[int, int], mode: str, k: int, stride: int, dilation: int) -> list[int]:
    """For each tap of a 1-D convolution over ``size`` samples padded by ``pad`` in ``mode``: the most outputs whose
    tap reads one same input sample (a zero pad reads none)."""
    idx = torch.arange(size, dtype=torch.float64).view(1, 1, -1)
    if mode == "zeros":
        padded = F.pad(idx, pad, value=-1.0)
    else:
        padded = F.pad(idx, pad, mode=mode)
    padded = padded.flatten().long()
    n_out = (padded.numel() - dilation * (k - 1) - 1) // stride + 1
    out = []
    for t in range(k):
        reads = padded[t * dilation : t * dilation + (n_out - 1) * stride + 1 : stride]
        reads = reads[reads >= 0]
        out.append(int(torch.bincount(reads).max()) if reads.numel() else 0)
    return out


def _smallest_size(mode: str, pad: tuple[int, int]) -> int:
    """The smallest axis torch pads in ``mode`` (circular: pad <= size; reflect: pad < size)."""
    return {"circular": max(pad), "reflect": max(pad) + 1}.get(mode, 1) or 1


def pad_multiplicity(conv: nn.Conv2d) -> torch.Tensor:
    """(kh, kw): for each tap, the square root of the most outputs that read one same input pixel through it, over
    every input size torch accepts: a zero pad reads each pixel at most once per tap (1); circular, reflect and
    replicate pads wider than what the kernel consumes repeat border pixels (a circular pad wider than half the
    kernel reads a pixel twice per tap, a replicate pad of p reads the border p + 1 times). The reads of one tap
    form a selection matrix whose norm is that square root."""
    mode = conv.padding_mode
    pads = conv._reversed_padding_repeated_twice  # (w_lo, w_hi, h_lo, h_hi)
    axes = []
    for axis, (lo, hi) in enumerate(((pads[2], pads[3]), (pads[0], pads[1]))):
        k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
        first = _smallest_size(mode, (lo, hi))
        sizes = range(max(first, d * (k - 1) + 1 - lo - hi), first + 2 * (lo + hi + d * k + s) + 4)
        reads = torch.tensor([_axis_reads(n, (lo, hi), mode, k, s, d) for n in sizes])  # (sizes, taps)
        axes.append(reads.amax(0))
    return (axes[0][:, None] * axes[1][None, :]).double().sqrt()


def conv_bound(conv: nn.Conv2d, kernel: torch.Tensor | None = None) -> float:
    """A bound on the l2 norm of ``conv`` (its applied kernel, or ``kernel``) for every input size: the sum over taps
    of each tap's channel-matrix norm (max over groups) times the tap's read multiplicity (:func:`pad_multiplicity`:
    1 for zero padding and for circular padding no wider than half the kernel)."""
    k = applied_parameter(conv) if kernel is None else kernel
    if conv.padding_mode == "zeros":
        return tap_norm_sum(k, conv.groups)
    w = k.detach().double()
    out = w.shape[0] // conv.groups
    factor = pad_multiplicity(conv)
    with one_thread():
        return (
            max(float((torch.linalg.matrix_norm(p.permute(2, 3, 0, 1), ord=2) * factor).sum()) for p in w.split(out))
            * SAFE
        )


def applied_parameter(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor ``module``'s forward applies as ``name``: a parametrization's value, or what torch's hook-style
    ``spectral_norm`` / ``weight_norm`` compute before each forward (from their stored vectors, without a power
    step), not the possibly stale attribute those hooks overwrite. Other pre-hooks are refused (:func:`check_hooks`)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm) and hook.name == name:
            with torch.no_grad():
                return hook.compute_weight(module, do_power_iteration=False)
        if isinstance(hook, WeightNorm) and hook.name == name:
            with torch.no_grad():
                return hook.compute_weight(module)
    return getattr(module, name)


def observer(hook):
    """Mark a forward hook as one that only reads (robustsim's rounding tape): :func:`check_hooks` lets it pass."""
    hook._robustsim_observer = True
    return hook


def check_hooks(module: nn.Module) -> None:
    """RobustsimError unless every forward hook of ``module`` is one whose effect robustsim accounts for: torch's
    hook-style spectral / weight norm (:func:`applied_parameter`) or a robustsim observer. Any other hook may
    change what the module computes, so a bound read off its tensors would speak of another function."""
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


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> float:
    """Eval mode's affine map (a network in training mode is refused before: :func:`mode_dependent`)."""
    if m.running_var is None:
        raise RobustsimError(f"{type(m).__name__} keeps no running statistics, so it has no fixed bound")
    gamma = m.weight.detach().double() if m.weight is not None else torch.ones_like(m.running_var, dtype=torch.float64)
    return float((gamma.abs() / torch.sqrt(m.running_var.double() + m.eps)).max()) * SAFE


def exact_type(module: nn.Module) -> type:
    """The module's class, seen through torch's parametrization wrapper (``ParametrizedLinear`` is a Linear whose
    ``weight`` is the parametrization's value): the rules for torch modules apply by this exact type."""
    from torch.nn.utils import parametrize

    t = type(module)
    return (
        t.__bases__[0]
        if parametrize.is_parametrized(module) and t.__name__ == f"Parametrized{t.__bases__[0].__name__}"
        else t
    )


def _leaf_bound(module: nn.Module) -> float | None:
    t = exact_type(module)
    if t in _ONE:
        return 1.0
    if t is nn.Dropout:
        return 1.0  # eval mode: the identity (training mode is refused: mode_dependent)
    if t is nn.LeakyReLU:
        return max(1.0, abs(float(module.negative_slope)))
    if t is nn.Sigmoid:
        return 0.25
    if t is nn.Linear:
        return spectral_norm(applied_parameter(module))
    if t is nn.Conv2d:
        return conv_bound(module)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _batchnorm(module)
    return None


def lipschitz_bound(module: nn.Module) -> float:
    """The l2 Lipschitz constant the structure guarantees (module docstring). Raises RobustsimError for a module
    with no guarantee (composition by ``nn.Sequential`` only)."""
    check_hooks(module)
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
