"""Embeddings for certificates: computed in float64, with a stated bound on their rounding error.

Certificates are statements about the network in exact arithmetic (its stored float32 parameters,
every operation exact). We evaluate it in float64 and bound the distance to the exact embedding under
the standard model of floating-point arithmetic (every +, x rounds to nearest, |error| <= u |result|,
u = 2^-53; this covers any summation order, blocking or fused multiply-add):

- an inner product of n terms has error <= gamma_n sum |w_i x_i| with gamma_n = n u / (1 - n u), so a
  layer multiplying by weights W_1 .. W_m (in sequence, biases b) with largest fan-in n adds at most
  ``m gamma_n prod_i max(1, |||W_i|||) (||in|| + sum ||b||) + 2 u (||in|| + ||out||)``, where |||W||| bounds
  the l2 norm of the map with |W| (||W||_F for a matrix, the sum over kernel taps of ||W_tap||_F for a
  convolution);
- a parameter-free module (ReLU, padding, reshape) adds at most 2 u (||in|| + ||out||), a pooling sum
  of k values gamma_k ||in||, the preprocessing (resize, normalisation) gamma_8 (1 + 1/min std) ||x||;
- an error made at one layer grows by at most the Lipschitz bounds of the layers after it, bounded
  here by prod_l max(1, L_l) over the whole network (1 for robustsim's 1-Lipschitz layers).

The bound ``delta(x)`` is the sum of these terms, with the norms of the float64 activations measured
during the forward pass (forward hooks). It is ~1e-12 of the activations, far below any useful margin;
certificates subtract it (see :mod:`robustsim.certify.radius`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from robustsim.certify.lipschitz import lipschitz_bound
from torch import nn

from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric

U64 = 2.0**-53
U32 = 2.0**-24  # for checking the bound against a float32 forward (tests)


def gamma(n: int, unit: float = U64) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of an n-term inner product (unit roundoff u)."""
    nu = n * unit
    return nu / (1 - nu)


def _abs_opnorm(w: torch.Tensor) -> float:
    """An upper bound on the l2 norm of the linear map with entries |w| (matrix, or conv kernel)."""
    w = w.detach().double()
    if w.dim() <= 2:
        return float(w.norm())
    return float(w.flatten(2).norm(dim=(0, 1)).sum())  # one Frobenius norm per kernel tap, summed


def _fan_in(w: torch.Tensor) -> int:
    if w.dim() <= 2:
        return max(w.shape)
    return max(w.shape[0], w.shape[1]) * math.prod(w.shape[2:])


def _weights(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weight tensors the module multiplies by, bias-like vectors). A module that declares them
    (``rounding_weights``, ``rounding_biases``: the tensors its forward applies, e.g. SLL's weight and folded
    kernel) is taken at its word; otherwise its own parameters and buffers are (matrices and vectors)."""
    declared = getattr(module, "rounding_weights", None)
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    mats = list(declared()) if declared is not None else [t for t in own if t.dim() >= 2]
    biases = getattr(module, "rounding_biases", None)
    vecs = list(biases()) if biases is not None else [t for t in own if t.dim() == 1 and t.is_floating_point()]
    return mats, vecs


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _units(net: nn.Module) -> list[nn.Module]:
    """The modules whose rounding is bounded one by one: leaves, and whole blocks that say which weights they
    multiply by (``rounding_weights``; their insides, e.g. a weight parametrization, are not traced)."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if hasattr(m, "rounding_weights") or _is_leaf(m):
            out.append(m)
        else:
            for child in m.children():
                visit(child)

    visit(net)
    return out


class _Tape:
    """Forward hooks that add up the per-sample rounding terms of every leaf module."""

    def __init__(self, net: nn.Module, unit: float = U64) -> None:
        self.total: torch.Tensor | None = None
        self.unit = unit
        self.handles = [m.register_forward_hook(self._hook) for m in _units(net)]

    def _hook(self, module: nn.Module, args: tuple, out: object) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not isinstance(out, torch.Tensor) or x.shape[0] != out.shape[0]:
            return
        n_in, n_out = x.detach().flatten(1).norm(dim=1), out.detach().flatten(1).norm(dim=1)
        term = 2 * self.unit * (n_in + n_out)
        mats, vecs = _weights(module)
        if mats:
            n = max(_fan_in(w) for w in mats)
            growth = math.prod(max(1.0, _abs_opnorm(w)) for w in mats)
            bias = sum(float(v.detach().double().norm()) for v in vecs)
            term = term + len(mats) * gamma(n, self.unit) * growth * (n_in + bias)
        elif hasattr(module, "k"):  # a pooling sum of k x k values
            term = term + gamma(int(module.k) ** 2, self.unit) * n_in
        self.total = term if self.total is None else self.total + term

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def float64(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in float64, restoring each parameter's and buffer's dtype after (float32 -> float64
    -> float32 is exact, so the module comes back bit for bit)."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    dtypes = {name: t.dtype for name, t in tensors}
    for name, t in tensors:  # a weight parametrization keeps its dtype: its module applies its float32 result
        if "parametrizations." not in name and t.is_floating_point():
            t.data = t.data.double()
    try:
        yield module
    finally:
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if dtypes.get(name, t.dtype) != t.dtype:
                t.data = t.data.to(dtypes[name])
        for m in module.modules():  # the module itself included
            if hasattr(m, "_cache"):
                m._cache = None


def error_growth(metric: EmbeddingMetric) -> float:
    """prod over leaf modules of max(1, their Lipschitz bound): how much an error can grow on its way to
    the output; the declared constant (at least 1) for a net whose layers carry no bounds."""
    try:
        return math.prod(max(1.0, lipschitz_bound(m)) for m in metric.net.modules() if _is_leaf(m))
    except RobustsimError:
        return max(1.0, float(metric.lipschitz or 1.0))


@torch.no_grad()
def embed_with_error(metric: EmbeddingMetric, x: torch.Tensor, unit: float = U64) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, delta): float64 embeddings (B, D) of validated [0, 1] images and per-image bounds
    ||e - f_exact(x)|| <= delta (module docstring). ``x`` may be float32; it is converted exactly.
    ``unit`` is the unit roundoff the bound is stated for (2^-53, the float64 forward that runs)."""
    try:
        growth = (
            math.prod(max(1.0, lipschitz_bound(m)) for m in metric.net.children())
            if any(True for _ in metric.net.children())
            else max(1.0, lipschitz_bound(metric.net))
        )
    except Exception:  # noqa: BLE001 - a declared-only net: use its declared constant
        growth = max(1.0, float(metric.lipschitz or 1.0))
    with float64(metric):
        x64 = x.double()
        pre = metric.preprocess(x64)
        std_inv = 1.0 / float(metric.std.abs().min())
        start = gamma(8, unit) * (1 + std_inv) * pre.flatten(1).norm(dim=1)
        tape = _Tape(metric.net, unit)
        try:
            e = metric.net(pre).flatten(1)
        finally:
            tape.close()
    local = tape.total if tape.total is not None else torch.zeros_like(start)
    return e, growth * (start + local)
