"""The rounding of the metric's own forward pass, bounded, so that a certificate speaks of the decision the
deployed metric makes (float32, or whatever dtype and device it runs in), not of exact arithmetic.

The **exact function** f is the metric's embedding of the caller's image in exact arithmetic with the tensors it
applies (stored weights and buffers, frozen derived tensors), the exact resize matrix and the stored mean / std.
Every evaluation of the metric (any batch, any summation order) computes F(x) with ||F(x) - f(x)|| <= delta(x):

- the preprocessing: an interpolation of T taps errs by gamma_T || |A| || ||x|| (A holds the weights the metric
  computes, read off in its dtype: they are part of the exact function, and of the certificate's constant);
  (x - mean) / std adds u (1 + max std / min std) ||pre||;
- each layer adds at most a ||in|| + c ||out|| + d (:mod:`robustsim.nn.rounding`: the standard model, unit
  roundoff u of the dtype, evaluated on the computed activations measured by forward hooks, in float64);
- an error made before a layer grows by at most that layer's Lipschitz bound: the sum is multiplied by
  G = prod max(1, L_l) (the network is a composition).

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
from robustsim.certify.lipschitz import lipschitz_bound, preprocess_lipschitz
from torch import nn

from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric
from robustsim.metrics.preprocess import Resize, axis_matrices
from robustsim.nn.bounds import observer
from robustsim.nn.derived import FROZEN, Derived
from robustsim.nn.rounding import affine_terms, gamma, memo, module_local, module_terms

U64 = 2.0**-53
U32 = 2.0**-24
UNITS = {torch.float64: U64, torch.float32: U32, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
TF32 = 2.0**-11


def unit_roundoff(metric: EmbeddingMetric) -> float:
    """The unit roundoff of the arithmetic the metric's forward runs in (module docstring)."""
    u = UNITS.get(metric.dtype, U32)
    if metric.dtype == torch.float32 and metric.device.type == "cuda":
        if torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32:
            u = TF32
    return u


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


def _units(net: nn.Module) -> list[nn.Module]:
    """The modules whose rounding is bounded one by one: those with a rule (their insides are theirs), else
    the children of containers, else unknown leaves (bounded generically, see :func:`_generic_terms`)."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        parts = [c for name, c in m.named_children() if name != "parametrizations"]  # a parametrization: its weight
        if callable(getattr(m, "rounding_terms", None)) or not parts:
            out.append(m)
        else:
            for child in parts:
                visit(child)

    visit(net)
    return out


def _generic_terms(module: nn.Module, out_shape: tuple[int, ...], unit: float) -> tuple[float, float, float]:
    """A module robustsim has no rule for: each matrix (>= 2-D tensor) it owns is taken as one inner-product map
    of its fan-in, plus 2u of elementwise work on its input and output (an assumption, stated in reports)."""
    mats = [t for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)] if t.dim() >= 2]
    a, c = 2 * unit, 2 * unit
    for w in mats:
        m = w.detach().double().flatten(1).abs()
        ta, _, _ = affine_terms(m.shape[1], float(torch.linalg.matrix_norm(m, ord=2)), 0.0, unit)
        a += ta
    return a, c, 0.0


def _unit_bound(module: nn.Module, declared: float) -> float:
    """The unit's Lipschitz bound (memoised while its weights are unchanged); a declared-only network's declared
    constant where the unit proves none."""

    def compute() -> tuple[float, float, float]:
        try:
            return lipschitz_bound(module), 0.0, 0.0
        except RobustsimError:
            return max(1.0, declared), 0.0, 0.0

    return memo(module, ("lipschitz",), 0.0, compute)[0]


def _norms(t: torch.Tensor, unit: float) -> torch.Tensor:
    """(B,) float64 upper bounds on the l2 norms of the rows of ``t``, computed in its own dtype: a sum of n
    squares errs by gamma_n relative, its square root by u more."""
    flat = t.detach().flatten(1)
    n = flat.shape[1]
    norm = torch.linalg.vector_norm(flat, dim=1).double()
    return norm * (1 + gamma(n + 2, UNITS.get(flat.dtype, unit)))


class _Tape:
    """Forward hooks adding up each unit's a ||in|| + c ||out|| + d per sample (norms in float64)."""

    def __init__(self, metric: EmbeddingMetric, unit: float, componentwise: bool = True) -> None:
        self.unit, self.total, self.assumed = unit, None, []
        self.componentwise = componentwise and unit > U64  # a float64 norm bound is already ~1e-13
        self.sensitivity = 0.0  # sum over units of (a + c)
        self.growth_terms = 0.0  # sum over units of (a + c L)
        self.growth, self.declared = 1.0, float(metric.__dict__.get("lipschitz") or 1.0)
        hook = observer(lambda module, args, out: self._hook(module, args, out))
        self.handles = [m.register_forward_hook(hook) for m in _units(metric.net)]

    def _hook(self, module: nn.Module, args: tuple, out: object) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not isinstance(out, torch.Tensor) or x.shape[0] != out.shape[0]:
            return
        terms = module_terms(module, tuple(x.shape[1:]), tuple(out.shape[1:]), self.unit)
        if terms is None:
            terms = _generic_terms(module, tuple(out.shape[1:]), self.unit)
            self.assumed.append(type(module).__name__)
        a, c, d = terms
        lip = _unit_bound(module, self.declared)
        self.growth *= max(1.0, lip)
        self.sensitivity += a + c
        self.growth_terms += a + c * lip
        if a == c == d == 0.0:
            return
        term = a * _norms(x, self.unit) + d
        local = module_local(module, x, out, self.unit) if self.componentwise else None
        if local is not None:  # componentwise on the recorded input: as Lipschitz in it as the term it replaces
            term = torch.minimum(term, local.to(term))
        term = term + c * _norms(out, self.unit)
        self.total = term if self.total is None else self.total + term

    def close(self) -> None:
        for h in self.handles:
            h.remove()


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


def embed_with_error(
    metric: EmbeddingMetric, x: torch.Tensor, componentwise: bool = True
) -> tuple[torch.Tensor, torch.Tensor, Rounding]:
    """(computed embeddings in the metric's dtype (B, D), the same as float64, their :class:`Rounding`) for a
    validated [0, 1] batch, from one forward pass of the metric as it runs (module docstring). ``componentwise``
    False keeps every layer's norm bound (no second pass over the layers' absolute values: cheaper, looser)."""
    unit = unit_roundoff(metric)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    resize_coef, norm_coef = _preprocess_terms(metric, hw, unit)
    min_std = float(metric.std.detach().double().abs().min())
    with torch.no_grad():
        xin = metric.as_input(x)
        pre = metric.preprocess(xin)
        tape = _Tape(metric, unit, componentwise)
        try:
            e = metric.net(pre).flatten(1)
        finally:
            tape.close()
        n_x, n_pre = _norms(xin, unit), _norms(pre, unit)
    start = resize_coef / min_std * n_x + norm_coef * n_pre
    local = tape.total if tape.total is not None else torch.zeros_like(start)
    g, l_pre = tape.growth, preprocess_lipschitz(metric, hw)
    s = g * (tape.sensitivity + norm_coef)
    kappa = g * (resize_coef / min_std + norm_coef * l_pre + l_pre * g * tape.growth_terms)
    kappa = kappa / (1 - s) if s < 1 else math.inf
    delta = g * (start + local)
    return e, e.double(), Rounding(delta, s, kappa, unit, tuple(dict.fromkeys(tape.assumed)))


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
