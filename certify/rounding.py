"""The rounding of the metric's own forward pass, bounded, so that a certificate speaks of the decision the
deployed metric makes (float32, or whatever dtype and device it runs in), not of exact arithmetic.

The **exact function** f is the metric's embedding of the caller's image in exact arithmetic with the tensors it
applies (stored weights and buffers, frozen derived tensors), the exact resize matrix and the stored mean / std.
Every evaluation of the metric (any batch, any summation order) computes F(x) with ||F(x) - f(x)|| <= delta(x):

- the preprocessing: an interpolation of T taps errs by gamma_T || |A| || ||x|| (A holds the weights the metric
  computes, read off in its dtype: they are part of the exact function, and of the certificate's constant);
  (x - mean) / std adds u (1 + max std / min std) ||pre||;
- the cast of the caller's image to the metric's dtype, when it narrows: u ||x|| in the image, times the
  preprocessing's constant;
- each call of the recorded forward (:mod:`robustsim.nn.graph`: what runs, hooks and casts included) adds at most
  a ||in|| + c ||out|| + d (:mod:`robustsim.nn.rules`, :mod:`robustsim.nn.rounding`: the standard model, unit
  roundoff u of the dtype the call computes in, evaluated on the recorded activations, norms in float64 for half
  precision);
- an error made before a call grows by at most that call's constant: the sum is multiplied by
  G = prod max(1, s_n) (:mod:`robustsim.nn.compose`).

Over a ball, delta(x') <= delta(x) (1 + S) / (1 - S) + kappa ||x' - x||, where S and kappa depend on the weights
only (:class:`Rounding`): the bound moves with the activations' norms, and those move at most as fast as the
Lipschitz bound allows. The unit roundoff is the dtype's (2^-24 for float32, 2^-53 for float64, 2^-8 bfloat16,
2^-11 float16), and 2^-11 for float32 on CUDA while TF32 is allowed (PyTorch's default for convolutions).
Float32 bounds are ~1e-4 of the activations; the float64 pass of :func:`float64_copy` gives estimates ~1e-13.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch

from robustsim.certify.lipschitz import declared_constant, network_lipschitz, preprocess_lipschitz
from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.preprocess import Resize, axis_matrices
from robustsim.nn.compose import graph_rounding, norms, unit_for
from robustsim.nn.derived import FROZEN, Derived
from robustsim.nn.graph import record
from robustsim.nn.rounding import UNITS, gamma, unit_of

U64 = 2.0**-53
U32 = 2.0**-24


def unit_roundoff(metric: EmbeddingMetric) -> float:
    """The unit roundoff of the arithmetic the metric's forward runs in (module docstring)."""
    return unit_of(metric.dtype, metric.device)


def cosine_slack(dim: int, unit: float) -> float:
    """How far the computed ``1 - cos`` of two D-dim embeddings can be from the exact one of the same computed
    embeddings, for :meth:`EmbeddingMetric.embedding_distance`: in float64, normalising (relative gamma_D / 2 + 2u per
    entry), the D products and their sum (gamma_D) and the subtraction from 1 (2u) err by at most 2.5 gamma_{D+4}
    (u = 2^-53); the result is then rounded once to the metric's dtype (relative ``unit``, d <= 2, so at most
    2 ``unit``). A computed d1 < d0 holds whenever the exact cos1 - cos0 exceeds twice this (rounding is monotone)."""
    return 2.5 * gamma(dim + 4, U64) + 2 * unit


@dataclass
class Rounding:
    """delta (B,): ||F(x) - f(x)|| <= delta at the evaluated images; for x' within r of x,
    ||F(x') - f(x')|| <= delta (1 + S) / (1 - S) + kappa r (:meth:`at`)."""

    delta: torch.Tensor
    sensitivity: float
    kappa: float
    unit: float
    assumed: tuple[str, ...] = ()  # modules bounded by the generic rule (no rule of their own)

    def at(self, r: torch.Tensor | float) -> torch.Tensor:
        s = self.sensitivity
        grow = (1 + s) / (1 - s) if s < 1 else math.inf
        return self.delta * grow + self.kappa * r

    def in_unit(self, unit: float) -> Rounding:
        """The bound of the same network evaluated with unit roundoff ``unit`` <= this one's (the float64 twin
        of a float32 metric), for the same image, from this bound alone.

        Every term of the bound is linear in the unit (gamma_n(v) <= (v / u) gamma_n(u) for v <= u) and, in the
        activations, Lipschitz with the constants summed in S. With k = v / u, the other evaluation's activations
        lie within delta + delta' of this one's, so delta' <= k (delta + S (delta + delta')), i.e.
        delta' <= k delta (1 + S) / (1 - k S); S and kappa scale by k the same way."""
        k, s = unit / self.unit, self.sensitivity
        if k > 1 or k * s >= 1:
            raise ValueError(f"unit {unit:g} is not below this bound's {self.unit:g}")
        shrink = (1 - s) / (1 - k * s) if s < 1 else math.inf
        return Rounding(k * self.delta * (1 + s) / (1 - k * s), k * s, k * self.kappa * shrink, unit, self.assumed)

    def split(self, n: int) -> tuple[Rounding, ...]:
        return tuple(Rounding(d, self.sensitivity, self.kappa, self.unit, self.assumed) for d in self.delta.split(n))


def _preprocess_terms(metric: EmbeddingMetric, hw: tuple[int, int], unit: float) -> tuple[float, float]:
    """(resize coefficient r: the resize errs by at most r ||x||; normalisation coefficient on ||pre||)."""
    std = metric.std.detach().double().abs().flatten()
    return _preprocess_coefficients(metric.resizing, hw, unit, float(std.max() / std.min()), metric.dtype)


@functools.lru_cache(maxsize=256)
def _preprocess_coefficients(
    resize: Resize, hw: tuple[int, int], unit: float, std_ratio: float, dtype: torch.dtype
) -> tuple[float, float]:
    norm_coef = unit * (1.0 + std_ratio)
    if resize.resized_hw(hw) == tuple(hw):
        return 0.0, norm_coef  # no interpolation (a crop is exact)
    mats = axis_matrices(resize, hw, dtype)
    taps = math.prod(int((a != 0).sum(1).max()) for a in mats)
    coef = gamma(taps, unit) * math.prod(float(torch.linalg.matrix_norm(a.abs(), ord=2)) for a in mats)
    return coef, norm_coef


def _cast_unit(metric: EmbeddingMetric, x: torch.Tensor) -> float:
    """The unit of the cast of the caller's image to the metric's dtype (0 when it is exact: a widening or none)."""
    if x.dtype == metric.dtype or not x.is_floating_point():
        return 0.0
    mine, theirs = UNITS.get(metric.dtype, U32), UNITS.get(x.dtype, U32)
    return mine if mine > theirs else 0.0


def embed_with_error(
    metric: EmbeddingMetric, x: torch.Tensor, componentwise: bool = True
) -> tuple[torch.Tensor, torch.Tensor, Rounding]:
    """(computed embeddings in the metric's dtype (B, D), the same as float64, their :class:`Rounding`) for a
    validated [0, 1] batch of the caller's images (any float dtype), from one recorded forward pass of the metric
    as it runs (module docstring; the graph of :mod:`robustsim.nn.graph`). ``componentwise`` False keeps every
    node's norm bound (no second pass over the layers' absolute values: cheaper, looser). InputError when the bound
    is not finite (half precision sums too long for its unit) or when the metric's own forward disagrees with the
    recorded one by more than rounding explains."""
    unit = unit_roundoff(metric)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    _, source = network_lipschitz(metric, hw)  # refuses what has no bound, with its reason
    declared = declared_constant(metric) if source == "declared" else None
    resize_coef, norm_coef = _preprocess_terms(metric, hw, unit)
    cast = _cast_unit(metric, x)
    min_std = float(metric.std.detach().double().abs().min())
    with torch.no_grad():
        xin = metric.as_input(x)
        pre = metric.preprocess(xin)
        graph = record(metric.net, pre, unit_for, declared=declared)
        e = graph.nodes[graph.output].out.flatten(1)
        sums = graph_rounding(graph, componentwise and unit > U64)  # a float64 norm bound is already ~1e-13
        n_raw = norms(x) if cast else 0.0
        n_x, n_pre = norms(xin), norms(pre)
    l_pre = preprocess_lipschitz(metric, hw)
    start = resize_coef / min_std * n_x + norm_coef * n_pre + cast * l_pre * n_raw
    g = sums.growth
    s = g * (sums.sensitivity + norm_coef)
    kappa = g * (resize_coef / min_std + norm_coef * l_pre + cast * l_pre + l_pre * g * sums.growth_terms)
    kappa = kappa / (1 - s) if s < 1 else math.inf
    delta = g * (start + sums.total)
    if not bool(torch.isfinite(delta).all()):
        raise InputError(
            f"metric {metric.name!r} computes in {str(metric.dtype).replace('torch.', '')}, whose unit roundoff "
            f"{unit:g} gives no finite rounding bound for its sums (n u >= 1); certify it in float32 or float64 "
            "(metric.float(), robustsim certify --dtype float32)"
        )
    _check_same_function(metric, pre, e, delta)
    return e, e.double(), Rounding(delta, s, kappa, min(unit, sums.unit), sums.assumed)


def _check_same_function(metric: EmbeddingMetric, pre: torch.Tensor, e: torch.Tensor, delta: torch.Tensor) -> None:
    """The net under the proof: the metric's own forward (no recorder) on the first image is within 2 delta of the
    recorded one (both are evaluations within delta of the exact function)."""
    with torch.no_grad():
        own = metric.net(pre[:1]).flatten(1).double()
    gap = float(torch.linalg.vector_norm(own - e[:1].double()))
    if not gap <= 2 * float(delta[0]) * (1 + 1e-6) + 1e-300:
        raise InputError(
            f"metric {metric.name!r}'s own forward differs from the function robustsim analysed by {gap:.3g} "
            f"(rounding explains {2 * float(delta[0]):.3g}): it depends on the batch, on state or on how it is called; "
            "certify a network whose output depends on its own image only"
        )


def float64_copy(metric: EmbeddingMetric) -> EmbeddingMetric:
    """A float64 copy of ``metric`` that applies exactly the tensors the metric applies (each derived tensor, as
    the original computes it, stored in the copy: its float64 forward then evaluates the same exact function);
    the original is left untouched."""
    twin = copy.deepcopy(metric)
    for mine, theirs in zip(metric.modules(), twin.modules(), strict=True):
        if isinstance(mine, Derived):
            with torch.no_grad():
                theirs._buffers.pop(FROZEN, None)
                theirs.register_buffer(FROZEN, mine.applied().detach().clone(memory_format=torch.contiguous_format))
    return twin.double().eval()


def twin(metric: EmbeddingMetric) -> EmbeddingMetric:
    """The metric's float64 twin, made once while its tensors are unchanged."""
    key = tuple((t.data_ptr(), t._version) for t in [*metric.parameters(), *metric.buffers()])
    kept = metric.__dict__.get("_float64_twin")
    if kept is None or kept[0] != key:
        metric.__dict__.pop("_float64_twin", None)  # not copied into the twin itself
        kept = (key, float64_copy(metric))
        metric.__dict__["_float64_twin"] = kept
    return kept[1]


def is_adaptive(metric: object) -> bool:
    """Whether ``metric`` decides adaptively: an embedding metric marked ``decisions = "adaptive"`` that computes
    in a dtype below float64 (a float64 metric is its own twin)."""
    return (
        isinstance(metric, EmbeddingMetric)
        and getattr(metric, "decisions", "plain") == "adaptive"
        and metric.dtype != torch.float64
    )
