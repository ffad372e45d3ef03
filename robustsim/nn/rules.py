"""The rule table: for each torch function a forward may run on the image's values, a sound l2 Lipschitz constant
of its output in each argument that carries the image, and the rounding it adds (``(a, c, d)``: at most
a * (sum of those arguments' norms) + c ||output|| + d per sample; :mod:`robustsim.nn.rounding`).

A rule speaks of the function torch documents, evaluated with the constant arguments the forward passed (the
weights it applied, read off the call). The inequalities, one per family:

- **affine maps** (linear, matmul, convolutions of every dimension, transposed ones, batch norm in eval mode,
  sums and means, average and adaptive-average pooling, interpolation): the operator norm of the linear part
  (:mod:`robustsim.nn.convnorm` for convolutions: a transposed convolution is the adjoint of the convolution with
  its kernel, same norm; a nonnegative map's norm is at most sqrt(max row sum * max column sum), Schur's test;
  interpolation is separable, the product of its two axis matrices' norms); rounding gamma_n (|| |W| || ||x||
  + ||b||) for n-term sums;
- **selections** (reshapes, permutations, slices, pads, repeats, pixel shuffles): sqrt of the most outputs that
  read one input, counted on the call itself applied to the input's indices; exact arithmetic;
- **order statistics** (max / min pooling windows, sort, top-k, max / min / amax / amin over a dim, maximum of two
  tensors): |max_i a_i - max_i b_i| <= max_i |a_i - b_i|, so a window's output moves at most as far as its inputs
  in l2: sqrt(window multiplicity); sorting is non-expansive; exact;
- **elementwise activations**: the supremum of |f'| (ReLU 1, LeakyReLU / PReLU max(1, |slope|), ELU max(1,
  alpha), CELU 1, SELU scale max(1, alpha), SiLU 1.0998, GELU 1.1289, Mish 1.0886, Softplus 1, Hardswish 1.5,
  Hardsigmoid 1/6, Sigmoid 1/4, Tanh 1, Softsign 1, Tanhshrink 1), rounded up; rounding 4u ||x|| + 8u ||y||
  (libm functions within a few ulp: an assumption stated here);
- **lp norms over windows or dims** (LPPool, L2-norm pooling, vector norms): an l_p norm with p >= 2 is
  1-Lipschitz for l_2, p in [1, 2) is n^(1/p - 1/2); times sqrt(window multiplicity);
- **sums of two images' values** (x + f(x), cat, stack): sum of the constants (cat and stack in quadrature);
- **casts**: 1-Lipschitz, rounding at most the target's unit times ||x||.

Anything else that touches the image (a product of two image-dependent tensors, a division by one, exp, log, a
norm layer dividing by the input's own statistics, batch statistics, a random function in training mode) has no
rule and is refused by name. Constants that depend only on the weights are not analysed: their value is what the
forward applied.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from robustsim.errors import InputError
from robustsim.nn.bounds import SAFE, one_thread
from robustsim.nn.convnorm import conv_bound
from robustsim.nn.rounding import EXACT, Terms, affine_local, affine_terms, bias_norm, gamma, unit_of
from robustsim.nn.spectral import abs_conv_norm


@dataclass
class Call:
    """One recorded call: ``func(*args, **kwargs) -> out``; ``tensors`` the tensor arguments in order (lists
    flattened), ``variable`` the positions among them that carry the image."""

    name: str
    func: Callable
    args: tuple
    kwargs: dict
    out: Any
    tensors: tuple[torch.Tensor, ...]
    variable: tuple[int, ...]
    result: Any = None  # everything the call returned (``out`` is its first tensor)

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[i] if len(self.args) > i else default

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[self.variable[0]]

    @property
    def short(self) -> str:
        return self.name.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor.")


@dataclass
class Rule:
    """A node's constants: ``lips`` one per image-carrying argument, combined by sum or in quadrature; rounding
    ``terms`` and optionally a componentwise ``local`` bound (B,) that replaces ``a ||in|| + d``."""

    lips: tuple[float, ...]
    combine: str = "sum"
    terms: Terms = EXACT
    local: Callable[[], torch.Tensor] | None = field(default=None, repr=False)


class NoRule(InputError):
    """The call has no rule (or breaks one's conditions); the message names the call and why."""


def _one(call: Call, what: str = "") -> None:
    """Refuse unless the image flows only through the first tensor argument."""
    if call.variable != (0,):
        raise NoRule(f"{call.short} with the image in an argument other than its input{what} has no Lipschitz rule")


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _unit_of(t: torch.Tensor, unit: float) -> float:
    return unit_of(t.dtype, t.device) if t.is_floating_point() else unit


# ---------------------------------------------------------------------------------------------------------- memo

_MEMO: dict[tuple, float] = {}


def digest(*tensors: torch.Tensor | None) -> tuple:
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        data = t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
        out.append((tuple(t.shape), str(t.dtype), hashlib.blake2b(data, digest_size=16).hexdigest()))
    return tuple(out)


def memo(key: tuple, compute: Callable[[], float]) -> float:
    """``compute()`` memoised on a key that holds the tensors' contents (:func:`_digest`)."""
    if key not in _MEMO:
        if len(_MEMO) > 4096:
            _MEMO.clear()
        _MEMO[key] = float(compute())
    return _MEMO[key]


# --------------------------------------------------------------------------------------------- elementwise maps

#: name -> (Lipschitz constant, exact?)  for activations with no parameter that matters
_FIXED = {
    "relu": (1.0, True),
    "relu_": (1.0, True),
    "relu6": (1.0, True),
    "hardtanh": (1.0, True),
    "hardtanh_": (1.0, True),
    "abs": (1.0, True),
    "neg": (1.0, True),
    "negative": (1.0, True),
    "__neg__": (1.0, True),
    "clone": (1.0, True),
    "detach": (1.0, True),
    "contiguous": (1.0, True),
    "tanh": (1.0, False),
    "sigmoid": (0.25, False),
    "silu": (1.0999, False),
    "gelu": (1.1290, False),
    "mish": (1.0887, False),
    "softplus": (1.0, False),
    "hardswish": (1.5, False),
    "hardsigmoid": (0.16666672, False),  # torch applies 1/6 rounded to float32 (0.16666667163...) in every dtype
    "logsigmoid": (1.0, False),
    "softsign": (1.0, False),
    "tanhshrink": (1.0, False),
    "celu": (1.0, False),
    "selu": (1.0507009873554805 * 1.6732632423543772 * SAFE, False),
    "hardshrink": (1.0, True),
    "softshrink": (1.0, False),
    "threshold": (1.0, True),
}


def _libm(unit: float) -> Terms:
    return 4 * unit, 8 * unit, 0.0


def _fixed(call: Call, unit: float) -> Rule:
    _one(call)
    base = call.name.rsplit(".", 1)[-1]
    lip, exact = _FIXED[base]
    if base == "softplus":  # above the threshold torch returns x: a jump of log1p(exp(-beta t)) / beta, counted as
        beta, t = float(call.arg(1, "beta", 1.0)), float(call.arg(2, "threshold", 20.0))  # an error of the forward
        jump = math.log1p(math.exp(-beta * t)) / beta * math.sqrt(call.out[0].numel()) * SAFE
        a, c, _ = _libm(unit)
        return Rule((lip,), terms=(a, c, jump))
    if base == "threshold":  # threshold(x, t, v): x above t, v below: a jump unless v == t
        t, v = float(call.arg(1, "threshold")), float(call.arg(2, "value"))
        if t != v:
            raise NoRule(f"{call.short}(threshold={t}, value={v}) jumps at the threshold: no Lipschitz constant")
    if base == "softshrink" or base == "hardshrink":
        if base == "hardshrink" and float(call.arg(1, "lambd", 0.5)) != 0:
            raise NoRule(f"{call.short} jumps at +-lambda: no Lipschitz constant")
    return Rule((lip,), terms=EXACT if exact else _libm(unit))


def _slope(call: Call, unit: float) -> Rule:
    _one(call)
    base = call.name.rsplit(".", 1)[-1]
    if base.startswith("leaky_relu"):
        lip = max(1.0, _as_applied(call, float(call.arg(1, "negative_slope", 0.01))))
        return Rule((lip,), terms=(0.0, 2 * unit, 0.0))
    if base == "prelu":
        lip = max(1.0, float(call.tensors[1].detach().double().abs().max()))
        return Rule((lip,), terms=(0.0, unit, 0.0))
    if base.startswith("elu"):
        return Rule((max(1.0, _as_applied(call, float(call.arg(1, "alpha", 1.0)))),), terms=_libm(unit))
    if base == "rrelu":
        if call.arg(3, "training", False):
            raise NoRule(f"{call.short} in training mode draws random slopes: call .eval()")
        lo, hi = float(call.arg(1, "lower", 1 / 8)), float(call.arg(2, "upper", 1 / 3))
        return Rule((max(1.0, abs(lo), abs(hi)),), terms=(0.0, unit, 0.0))
    raise NoRule(f"{call.short} has no rule")


def _as_applied(call: Call, value: float) -> float:
    """max(|value|, |value in the input's dtype|): a Python number multiplies as the tensor's dtype holds it."""
    held = float(torch.tensor(value, dtype=call.x.dtype)) if call.x.is_floating_point() else value
    return max(abs(value), abs(held))


def _clamp(call: Call, unit: float) -> Rule:
    _one(call, " (a tensor bound)")
    return Rule((1.0,))


def _dropout(call: Call, unit: float) -> Rule:
    p = float(call.arg(1, "p", 0.5))
    training = bool(call.arg(2, "training", True))
    if training and p > 0:
        raise InputError(f"{call.short}(p={p}) in training mode is random: call .eval() before certifying")
    _one(call)
    return Rule((1.0,))


# ----------------------------------------------------------------------------------------------- affine maps


def _linear(call: Call, unit: float) -> Rule:
    _one(call, " (a weight computed from the image)")
    x, w = call.x, call.tensors[1]
    b = call.arg(2, "bias")
    lip = memo(("linear",) + digest(w), lambda: _spectral(w))
    n = w.shape[1] + (b is not None)
    abs_norm = memo(("abs-linear",) + digest(w), lambda: _spectral(w.abs()))
    positions = x[0].numel() // w.shape[1]
    return Rule(
        (lip,),
        terms=affine_terms(n, abs_norm, bias_norm(b, positions), unit),
        local=lambda: affine_local(F.linear, x, w, b, unit),
    )


def _spectral(w: torch.Tensor) -> float:
    with one_thread():
        return float(torch.linalg.matrix_norm(w.detach().double(), ord=2)) * SAFE


def _matmul(call: Call, unit: float) -> Rule:
    a, b = call.tensors[0], call.tensors[1]
    if call.variable == (0,):  # x @ W
        if b.dim() != 2:
            raise NoRule(f"{call.short} by a {b.dim()}-D constant has no rule (a 2-D weight only)")
        w = b.T
        local = lambda: affine_local(lambda xx, ww: xx @ ww.T, a, w, None, unit)  # noqa: E731
        n = w.shape[1]
    elif call.variable == (1,):  # W @ x
        if a.dim() != 2:
            raise NoRule(f"{call.short} by a {a.dim()}-D constant has no rule (a 2-D weight only)")
        w = a
        local = lambda: affine_local(lambda xx, ww: ww @ xx, b, w, None, unit)  # noqa: E731
        n = w.shape[1]
    else:
        raise NoRule(f"{call.short} of two image-dependent tensors is not Lipschitz")
    lip = memo(("linear",) + digest(w), lambda: _spectral(w))
    abs_norm = memo(("abs-linear",) + digest(w), lambda: _spectral(w.abs()))
    return Rule((lip,), terms=affine_terms(n, abs_norm, 0.0, unit), local=local)


def _same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Per axis, the larger side of torch's 'same' padding (a bound: the smaller side pads less)."""
    return tuple(math.ceil(d * (k - 1) / 2) for k, d in zip(kernel, dilation, strict=True))


def _conv(call: Call, unit: float) -> Rule:
    """convNd: the bound of :func:`robustsim.nn.convnorm.conv_bound` at the input's size."""
    _one(call, " (a kernel computed from the image)")
    w = call.tensors[1]
    nd = w.dim() - 2
    pad = call.arg(4, "padding", 0)
    dilation = _tuple(call.arg(5, "dilation", 1), nd)
    if isinstance(pad, str):
        pad = (0,) * nd if pad == "valid" else _same_padding(w.shape[2:], dilation)
    size = tuple(call.x.shape[-nd:])
    return _conv_rule(call, unit, size, _tuple(pad, nd), dilation, int(call.arg(6, "groups", 1)), w[0].numel())


def _conv_transpose(call: Call, unit: float) -> Rule:
    """conv_transposeNd: the adjoint of the convolution by its kernel from the output's size, the same norm."""
    _one(call, " (a kernel computed from the image)")
    w = call.tensors[1]
    nd, groups = w.dim() - 2, int(call.arg(6, "groups", 1))
    size = tuple(call.out.shape[-nd:])
    pad, dilation = _tuple(call.arg(4, "padding", 0), nd), _tuple(call.arg(7, "dilation", 1), nd)
    return _conv_rule(call, unit, size, pad, dilation, groups, w.shape[0] // groups * math.prod(w.shape[2:]))


def _conv_rule(call: Call, unit: float, size: tuple, pad: tuple, dilation: tuple, groups: int, taps: int) -> Rule:
    x, w, b = call.x, call.tensors[1], call.arg(2, "bias")
    stride = _tuple(call.arg(3, "stride", 1), w.dim() - 2)
    key = (call.name, size, stride, pad, dilation, groups) + digest(w)
    lip = memo(key, lambda: conv_bound(w, size, stride, pad, dilation, groups))
    abs_norm = memo(("abs-conv",) + digest(w), lambda: abs_conv_norm(w))
    positions = math.prod(call.out.shape[2:])
    fn = call.func
    args, kwargs = call.args[3:], {k: v for k, v in call.kwargs.items() if k not in ("input", "weight", "bias")}
    return Rule(
        (lip,),
        terms=affine_terms(taps + (b is not None), abs_norm, bias_norm(b, positions), unit),
        local=lambda: affine_local(lambda xx, ww: fn(xx, ww, None, *args, **kwargs), x, w, b, unit),
    )


def _batch_norm(call: Call, unit: float) -> Rule:
    if call.arg(5, "training", False):  # not a fixed function of one image: refused even where a bound is declared
        raise InputError(f"{call.short} in training mode normalises by the batch's statistics: call .eval()")
    _one(call, " (statistics computed from the image)")
    x = call.x
    mean, var = call.arg(1, "running_mean"), call.arg(2, "running_var")
    weight, bias, eps = call.arg(3, "weight"), call.arg(4, "bias"), float(call.arg(7, "eps", 1e-5))
    if mean is None or var is None:
        raise InputError(f"{call.short} without running statistics normalises by the batch's: no fixed bound")
    v = var.detach().double()
    g = weight.detach().double() if weight is not None else torch.ones_like(v)
    b = bias.detach().double() if bias is not None else torch.zeros_like(v)
    alpha = g / torch.sqrt(v + eps)
    lip = float(alpha.abs().max()) * SAFE
    # torch folds alpha = gamma * invstd and beta = bias - mean * alpha (each rounded), then alpha x + beta: per entry
    # at most 6u |alpha x| + 4u (|bias| + 2 |mean alpha|): the folded shift's error is relative to its two terms,
    # not to beta, which may cancel
    shift = b.abs() + 2 * (mean.detach().double() * alpha).abs()
    positions = x[0].numel() // v.numel()
    return Rule((lip,), terms=(6 * unit * lip, 0.0, 4 * unit * float(shift.norm()) * math.sqrt(positions)))


def _nonnegative(call: Call, unit: float, fn: Callable[[torch.Tensor], torch.Tensor], taps: int) -> Rule:
    """A linear map with nonnegative weights, evaluated through ``fn``: Schur's test from its row sums (fn of ones)
    and column sums (its adjoint on ones), in float64; rounding gamma_{taps+1} times the same norm."""
    x = call.x
    one = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device, requires_grad=True)
    with torch.enable_grad():
        rows = fn(one)
        (cols,) = torch.autograd.grad(rows, one, torch.ones_like(rows))
    lip = math.sqrt(float(rows.detach().abs().max()) * float(cols.abs().max())) * SAFE
    return Rule((lip,), terms=(gamma(taps + 1, unit) * lip, 0.0, 0.0))


def _avg_pool(call: Call, unit: float) -> Rule:
    _one(call)
    fn, rest, kwargs = call.func, call.args[1:], {k: v for k, v in call.kwargs.items() if k != "input"}
    nd = call.x.dim() - 2
    k = _tuple(call.arg(1, "kernel_size"), nd)
    return _nonnegative(call, unit, lambda t: fn(t, *rest, **kwargs), math.prod(k))


def _adaptive_avg(call: Call, unit: float) -> Rule:
    _one(call)
    fn, rest = call.func, call.args[1:]
    nd = call.x.dim() - 2
    ins, outs = call.x.shape[-nd:], call.out.shape[-nd:]
    taps = math.prod(-(-i // o) + 1 for i, o in zip(ins, outs, strict=True))
    return _nonnegative(call, unit, lambda t: fn(t, *rest, **call.kwargs), taps)


def _reduce_dims(call: Call) -> tuple[int, ...]:
    dim = call.arg(1, "dim")
    x = call.x
    if dim is None:
        raise NoRule(f"{call.short} over every dim mixes the images of a batch: give dims that exclude 0")
    dims = tuple(d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    if 0 in dims:
        raise NoRule(f"{call.short} over dim 0 mixes the images of a batch")
    return dims


def _sum_mean(call: Call, unit: float) -> Rule:
    _one(call)
    dims = _reduce_dims(call)
    n = math.prod(call.x.shape[d] for d in dims)
    lip = math.sqrt(n) if call.name.endswith("sum") else 1 / math.sqrt(n)
    return Rule((lip * SAFE,), terms=(gamma(n + 1, unit) * lip, 0.0, 0.0))


_INTERP = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")


def _interp_kwargs(call: Call) -> dict:
    """The interpolation call's arguments by name (nn.Upsample passes them by position)."""
    named = dict(zip(_INTERP, call.args, strict=False))
    named.update(call.kwargs)
    named.pop("input", None)
    return named


def _axis_matrix(call: Call, axis: int, nd: int) -> torch.Tensor:
    """The (out, in) matrix the interpolation call applies along ``axis`` (every other axis kept at size 1)."""
    x = call.x
    n = x.shape[2 + axis]
    eye = torch.eye(n, dtype=torch.float64, device=x.device).view(n, 1, *[n if a == axis else 1 for a in range(nd)])
    kwargs = _interp_kwargs(call)
    size, scale = kwargs.pop("size", None), kwargs.pop("scale_factor", None)
    if size is not None:
        sizes = _tuple(size, nd)
        kwargs["size"] = tuple(sizes[a] if a == axis else 1 for a in range(nd))
    else:
        scales = scale if isinstance(scale, (tuple, list)) else (scale,) * nd
        kwargs["scale_factor"] = tuple(float(scales[a]) if a == axis else 1.0 for a in range(nd))
    out = F.interpolate(eye, **kwargs)  # (n, 1, ..., m, ...)
    return out.reshape(n, -1).T  # (m, n)


def _interpolate(call: Call, unit: float) -> Rule:
    _one(call)
    x = call.x
    nd = x.dim() - 2
    mats = [_axis_matrix(call, a, nd) for a in range(nd)]
    with one_thread():
        lip = math.prod(float(torch.linalg.matrix_norm(m, ord=2)) for m in mats) * SAFE
        abs_norm = math.prod(float(torch.linalg.matrix_norm(m.abs(), ord=2)) for m in mats) * SAFE
    # a net under the separability: the axis matrices must reproduce the call on its own input
    y = x[:1].double()
    for a, m in enumerate(mats):
        y = torch.movedim(torch.movedim(y, 2 + a, -1) @ m.T, -1, 2 + a)
    got = call.out[:1].double()
    if y.shape != got.shape or not torch.allclose(y, got, rtol=1e-3, atol=1e-3 * float(got.abs().max()) + 1e-6):
        raise NoRule(f"{call.short} with {_interp_kwargs(call)} is not the separable map robustsim derives")
    taps = math.prod(int((m != 0).sum(1).max()) for m in mats)
    return Rule((lip,), terms=(gamma(taps, unit) * abs_norm, 0.0, 0.0))


# ------------------------------------------------------------------------------------------------- selections


def _index_multiplicity(call: Call) -> float:
    """sqrt of the most outputs that read one input entry, by applying the call to the entries' indices (1-based,
    float64: exact below 2^53; a constant pad reads as 0)."""
    x = call.x
    shown = tuple(digest(a) if isinstance(a, torch.Tensor) else repr(a) for a in call.args[1:])
    key = ("select", call.name, tuple(x.shape), shown, repr(sorted(call.kwargs.items())))
    if key in _MEMO:
        return _MEMO[key]
    idx = torch.arange(1, x.numel() + 1, dtype=torch.float64, device=x.device).view(x.shape)
    if call.name.endswith("pad"):  # F.pad(x, pad, mode, value): pads of the constant mode read nothing
        pad, mode = call.arg(1, "pad"), call.arg(2, "mode", "constant")
        out = F.pad(idx, pad, mode=mode, value=0.0) if mode == "constant" else F.pad(idx, pad, mode=mode)
    else:
        args = [idx if a is x else a for a in call.args]
        with torch.no_grad():
            out = call.func(*args, **call.kwargs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    counts = torch.zeros(x.numel() + 1, dtype=torch.int64, device=x.device)
    for o in outs:
        flat = o.reshape(-1)
        if not torch.equal(flat, flat.round()) or bool((flat < 0).any()):
            raise NoRule(f"{call.short} mixes values: not a selection")
        counts += torch.bincount(flat.long(), minlength=x.numel() + 1)
    value = math.sqrt(float(counts[1:].max()))
    _MEMO[key] = value
    return value


def _select(call: Call, unit: float) -> Rule:
    _one(call)
    return Rule((_index_multiplicity(call),))


def _bijection(call: Call, unit: float) -> Rule:
    _one(call)
    return Rule((1.0,))


def _cast(call: Call, unit: float) -> Rule:
    _one(call)
    out = call.out
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise NoRule(f"{call.short} to a non-floating dtype discards the image's values")
    x = call.x
    u_in, u_out = _unit_of(x, unit), _unit_of(out, unit)
    return Rule((1.0,), terms=(u_out if u_out > u_in else 0.0, 0.0, 0.0))


# ------------------------------------------------------------------------------------------- order statistics


def _axis_windows(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """The most windows of a 1-D pooling that read one input sample."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    counts = [0] * n
    for o in range(out):
        for t in range(k):
            i = o * s - p + t * d
            if 0 <= i < n:
                counts[i] += 1
    return max(counts) if counts else 0


def _max_pool(call: Call, unit: float) -> Rule:
    _one(call)
    x = call.x
    nd = 1 if "1d" in call.name else 3 if "3d" in call.name else 2
    k = _tuple(call.arg(1, "kernel_size"), nd)
    s = call.arg(2, "stride")
    s = k if s is None or (isinstance(s, (tuple, list)) and len(s) == 0) else _tuple(s, nd)
    p = _tuple(call.arg(3, "padding", 0), nd)
    d = _tuple(call.arg(4, "dilation", 1), nd)
    ceil = bool(call.arg(5, "ceil_mode", False))
    m = math.prod(_axis_windows(x.shape[-nd + a], k[a], s[a], p[a], d[a], ceil) for a in range(nd))
    return Rule((math.sqrt(m),))


def _adaptive_max(call: Call, unit: float) -> Rule:
    _one(call)
    x, out = call.x, call.out[0] if isinstance(call.out, tuple) else call.out
    nd = out.dim() - 2
    m = 1
    for a in range(nd):
        n, o = x.shape[-nd + a], out.shape[-nd + a]
        counts = [0] * n
        for i in range(o):
            for j in range((i * n) // o, -(-((i + 1) * n) // o)):
                counts[j] += 1
        m *= max(counts)
    return Rule((math.sqrt(m),))


def _order(call: Call, unit: float) -> Rule:
    """sort / topk, and max, min, amax, amin, median over dims that exclude the batch's (order statistics of
    disjoint groups); ``torch.max(a, b)`` of two tensors is :func:`_pairwise`."""
    base = call.name.rsplit(".", 1)[-1]
    second = call.arg(1, "other") if len(call.args) > 1 and isinstance(call.args[1], torch.Tensor) else None
    if second is not None or "other" in call.kwargs:
        return _pairwise(call, unit)
    _one(call)
    if base == "msort":
        raise NoRule(f"{call.short} sorts along dim 0, across the images of a batch")
    dim = call.arg(2, "dim", -1) if base == "topk" else call.arg(1, "dim", -1 if base == "sort" else None)
    if dim is None:
        raise NoRule(f"{call.short} over every dim mixes the images of a batch: give a dim")
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if any(int(d) % call.x.dim() == 0 for d in dims):
        raise NoRule(f"{call.short} over dim 0 mixes the images of a batch")
    return Rule((1.0,))


def _pairwise(call: Call, unit: float) -> Rule:
    """maximum / minimum of two tensors: each output moves at most as far as the larger of its two inputs' moves
    (times how far a broadcast operand's entry reaches)."""
    lips = tuple(_spread(call, call.tensors[i]) for i in call.variable)
    return Rule(lips, combine="quadrature" if len(lips) == 2 else "sum")


# ------------------------------------------------------------------------------------------------- lp norms


def _lp_factor(p: float, n: int) -> float:
    if p >= 2:
        return 1.0
    if p >= 1:
        return n ** (1 / p - 0.5) * SAFE
    raise NoRule(f"an l_{p} norm (p < 1) is not a norm: no Lipschitz constant")


def _lp_pool(call: Call, unit: float) -> Rule:
    _one(call)
    x = call.x
    p = float(call.arg(1, "norm_type"))
    if not (p == 2 or (p >= 2 and p == int(p) and int(p) % 2 == 0)):
        raise NoRule(f"{call.short}(norm_type={p}) raises signed values to an odd or fractional power: use p = 2")
    nd = 1 if "1d" in call.name else 3 if "3d" in call.name else 2
    k = _tuple(call.arg(2, "kernel_size"), nd)
    s = call.arg(3, "stride")
    s = k if s is None else _tuple(s, nd)
    ceil = bool(call.arg(4, "ceil_mode", False))
    m = math.prod(_axis_windows(x.shape[-nd + a], k[a], s[a], 0, 1, ceil) for a in range(nd))
    n = math.prod(k)
    return Rule((math.sqrt(m) * _lp_factor(p, n),), terms=(0.0, gamma(n + 6, unit) + 2 * unit, 0.0))


def _vector_norm(call: Call, unit: float) -> Rule:
    _one(call)
    base = call.name.rsplit(".", 1)[-1]
    x = call.x
    if base == "norm" and call.name.startswith("torch.Tensor"):
        p, dim = call.arg(1, "p", "fro"), call.arg(2, "dim")
    elif base == "norm":
        p, dim = call.arg(1, "p", "fro"), call.arg(2, "dim")
    else:
        p, dim = call.arg(1, "ord", 2), call.arg(2, "dim")
    p = 2.0 if p in ("fro", None) else float(p)
    if dim is None:
        raise NoRule(f"{call.short} over every dim mixes the images of a batch: give dims that exclude 0")
    dims = tuple(d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    if 0 in dims:
        raise NoRule(f"{call.short} over dim 0 mixes the images of a batch")
    n = math.prod(x.shape[d] for d in dims)
    return Rule((_lp_factor(p, n),), terms=(0.0, gamma(n + 4, unit), 0.0))


# ------------------------------------------------------------------------------------------ sums and products


def _scalar(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _const_abs(v: Any) -> torch.Tensor | float:
    return v.detach().double().abs() if isinstance(v, torch.Tensor) else abs(float(v))


def _is_var(call: Call, t: Any) -> bool:
    return isinstance(t, torch.Tensor) and any(call.tensors[i] is t for i in call.variable)


def _spread(call: Call, t: torch.Tensor) -> float:
    """sqrt of how many outputs an image-carrying operand's entry reaches by broadcasting (1 without); a broadcast
    across the batch would mix images and is refused."""
    out = call.out
    if not isinstance(out, torch.Tensor) or tuple(out.shape) == tuple(t.shape):
        return 1.0
    if t.dim() < out.dim() or t.shape[0] != out.shape[0]:
        raise NoRule(f"{call.short} broadcasts an image-dependent tensor of shape {tuple(t.shape)} across the batch")
    return math.sqrt(out.numel() / t.numel())


def _binary(call: Call) -> tuple[Any, Any]:
    return call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs.get("other")


def _add(call: Call, unit: float) -> Rule:
    """a + alpha b, a - alpha b, rsub: b - alpha a; the same tensor on both sides counts once."""
    base = call.name.rsplit(".", 1)[-1]
    alpha = abs(float(call.kwargs.get("alpha", 1.0)))
    a, b = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
    coef_a, coef_b = (alpha, 1.0) if base in ("rsub", "__rsub__") else (1.0, alpha)
    if a is b:
        _spread(call, a)
        sub = base in ("sub", "subtract", "__sub__", "sub_", "__isub__", "rsub", "__rsub__")
        return Rule((abs(1 - alpha) if sub else 1 + alpha,), terms=(0.0, unit, 0.0))
    lips = tuple(c * _spread(call, t) for t, c in ((a, coef_a), (b, coef_b)) if _is_var(call, t))
    # a Python number is converted to the tensor's dtype first: an error of at most u |c| in every output entry
    scalar = next((abs(v) for v in (_scalar(a), _scalar(b)) if v is not None), 0.0)
    shift = unit * scalar * max(1.0, alpha) * math.sqrt(call.out[0].numel()) if scalar else 0.0
    return Rule(lips, terms=(0.0, unit, shift))


def _mul(call: Call, unit: float) -> Rule:
    if len(call.variable) != 1:
        raise NoRule(f"{call.short} of two image-dependent tensors is not Lipschitz")
    a, b = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
    other = b if any(call.tensors[i] is a for i in call.variable) else a
    if other is a and other is b:
        raise NoRule(f"{call.short} of the image with itself is not Lipschitz")
    c = _const_abs(other)
    lip = float(c.max()) if isinstance(c, torch.Tensor) else c
    if not isinstance(c, torch.Tensor):  # a Python number: applied as its value in the tensor's dtype
        return Rule((_as_applied(call, lip) * SAFE * _spread(call, call.x),), terms=(0.0, 2 * unit, 0.0))
    return Rule((lip * SAFE * _spread(call, call.x),), terms=(0.0, unit, 0.0))


def _div(call: Call, unit: float) -> Rule:
    a = call.args[0]
    if len(call.variable) != 1 or not any(call.tensors[i] is a for i in call.variable):
        raise NoRule(f"{call.short} by an image-dependent tensor is not Lipschitz")
    if call.kwargs.get("rounding_mode") is not None:
        raise NoRule(f"{call.short} with rounding_mode={call.kwargs['rounding_mode']!r} jumps: no Lipschitz constant")
    b = call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
    c = _const_abs(b)
    smallest = float(c.min()) if isinstance(c, torch.Tensor) else c
    if smallest == 0:
        raise NoRule(f"{call.short} by zero")
    if not isinstance(c, torch.Tensor):  # a Python number converted to the tensor's dtype (or its reciprocal taken)
        inverse = max(1 / smallest, _as_applied(call, 1 / smallest))
        return Rule(((1 + 2 * unit) * SAFE * inverse * _spread(call, a),), terms=(0.0, 3 * unit, 0.0))
    return Rule((SAFE / smallest * _spread(call, a),), terms=(0.0, unit, 0.0))


def _cat(call: Call, unit: float) -> Rule:
    dim = call.arg(1, "dim", 0)
    if int(dim) % (call.x.dim() + (call.name.endswith("stack"))) == 0:
        raise NoRule(f"{call.short} along dim 0 joins batches: the images of a batch would mix")
    return Rule(tuple(1.0 for _ in call.variable), combine="quadrature")


# ------------------------------------------------------------------------------------------------------ table


def _names(prefixes: Sequence[str], bases: Sequence[str]) -> list[str]:
    return [f"{p}.{b}" for p in prefixes for b in bases]


T, TT, F_ = "torch", "torch.Tensor", "torch.nn.functional"
RULES: dict[str, Callable[[Call, float], Rule]] = {}
for _b in _FIXED:
    for _n in _names((T, TT, F_, "torch.special", "torch.nn.functional"), (_b,)):
        RULES[_n] = _fixed
for _n in _names((T, TT, F_), ("leaky_relu", "leaky_relu_", "prelu", "elu", "elu_", "rrelu", "rrelu_")):
    RULES[_n] = _slope
for _n in _names((T, TT), ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_")):
    RULES[_n] = _clamp
for _n in _names((F_,), ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")):
    RULES[_n] = _dropout
RULES[f"{F_}.linear"] = _linear
for _n in _names((T, TT), ("matmul", "mm", "__matmul__", "__rmatmul__")):
    RULES[_n] = _matmul
for _n in _names((F_, T), ("conv1d", "conv2d", "conv3d")):
    RULES[_n] = _conv
for _n in _names((F_, T), ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")):
    RULES[_n] = _conv_transpose
RULES[f"{F_}.batch_norm"] = _batch_norm
for _n in _names((F_, T), ("avg_pool1d", "avg_pool2d", "avg_pool3d")):
    RULES[_n] = _avg_pool
for _n in _names((F_, T), ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")):
    RULES[_n] = _adaptive_avg
for _n in _names((T, TT), ("sum", "mean")):
    RULES[_n] = _sum_mean
RULES[f"{F_}.interpolate"] = _interpolate
RULES[f"{F_}.upsample"] = _interpolate
for _n in _names((T, TT), (
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "movedim",
    "moveaxis", "view_as", "reshape_as", "flip", "fliplr", "flipud", "roll", "swapaxes", "swapdims", "T.__get__",
    "mT.__get__", "data.__get__",
)):
    RULES[_n] = _bijection
for _n in _names((F_, T), ("pixel_shuffle", "pixel_unshuffle", "channel_shuffle")):
    RULES[_n] = _bijection
for _n in _names((T, TT), (
    "__getitem__", "narrow", "select", "expand", "expand_as", "repeat", "tile", "chunk", "split", "unbind",
    "index_select", "tensor_split", "unfold", "repeat_interleave",
)):
    RULES[_n] = _select
for _n in _names((F_,), ("pad", "unfold")):
    RULES[_n] = _select
for _n in _names((TT,), ("float", "double", "half", "bfloat16", "to", "type", "type_as", "cpu", "cuda")):
    RULES[_n] = _cast
for _n in _names((F_, T), ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
                           "max_pool2d_with_indices", "max_pool3d_with_indices")):
    RULES[_n] = _max_pool
for _n in _names((F_, T), ("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")):
    RULES[_n] = _adaptive_max
for _n in _names((T, TT), ("sort", "msort", "topk", "max", "min", "amax", "amin", "median")):
    RULES[_n] = _order
for _n in _names((T, TT), ("maximum", "minimum", "fmax", "fmin")):
    RULES[_n] = _pairwise
for _n in _names((F_,), ("lp_pool1d", "lp_pool2d", "lp_pool3d")):
    RULES[_n] = _lp_pool
for _n in ["torch.linalg.vector_norm", "torch.norm", "torch.Tensor.norm"]:
    RULES[_n] = _vector_norm
for _n in _names((T, TT), ("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "subtract", "__sub__",
                           "__isub__", "rsub", "__rsub__")):
    RULES[_n] = _add
for _n in _names((T, TT), ("mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__")):
    RULES[_n] = _mul
for _n in _names((T, TT), ("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__")):
    RULES[_n] = _div
for _n in _names((T,), ("cat", "concat", "concatenate", "stack")):
    RULES[_n] = _cat


def rule_for(call: Call, unit: float) -> Rule:
    """The node's constants (module docstring), or :class:`NoRule` naming the call."""
    fn = RULES.get(call.name)
    if fn is None:
        raise NoRule(f"{call.short} has no Lipschitz rule")
    rule = fn(call, unit)
    if len(rule.lips) != len(call.variable):
        raise NoRule(f"{call.short} with the image in {len(call.variable)} arguments has no rule")
    return rule
