"""Lipschitz constants: the bound the function that runs proves (on the graph :mod:`robustsim.nn.graph` records;
:func:`robustsim.nn.compose.lipschitz_bound` re-exported here), the exact norm of a metric's preprocessing (resize,
normalisation) for the caller's image size, and an empirical lower estimate."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustsim.errors import InputError, RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.metrics.preprocess import Resize, resize_norm
from robustsim.nn.bounds import mode_dependent
from robustsim.nn.compose import checked_record, graph_lipschitz, lipschitz_bound, probe  # noqa: F401 (re-exported)
from robustsim.nn.graph import module_hooks
from robustsim.nn.rules import NoRule


def estimate_lipschitz(
    f: nn.Module, x: torch.Tensor, power_steps: int = 50, ascent_steps: int = 100, radius: float = 0.05, seed: int = 0
) -> float:
    """Empirical lower estimate of f's l2 Lipschitz constant around the batch ``x``.

    Max of (a) power iteration on J^T J at every point of ``x`` (spectral norm of the local
    Jacobian) and (b) gradient ascent of ||f(a) - f(b)|| / ||a - b|| over pairs starting near ``x``.
    A true constant L is never exceeded by this estimate (up to float error).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    was_training = f.training
    grads = [(p, p.requires_grad) for p in f.parameters()]
    f.eval()
    for p, _ in grads:  # input gradients only: lets eval-mode weight caches (SLL rescaling) apply
        p.requires_grad_(False)
    try:
        x = x.detach()
        best = 0.0
        # (a) power iteration per sample, batched: v <- J^T J v (rows of f depend on rows of x only)
        shape = (-1, *[1] * (x.dim() - 1))
        v = torch.randn(x.shape, generator=g).to(x)
        for _ in range(power_steps):
            v = v / v.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12)
            _, jv = torch.autograd.functional.jvp(f, x, v)
            _, v = torch.autograd.functional.vjp(f, x, jv)
        v = v / v.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12)
        _, jv = torch.autograd.functional.jvp(f, x, v)
        best = max(best, float(jv.flatten(1).norm(dim=1).max()))
        # (b) pair ascent
        a = x.clone().requires_grad_(True)
        b = (x + radius * torch.randn(x.shape, generator=g).to(x)).requires_grad_(True)
        opt = torch.optim.Adam([a, b], lr=radius / 10)
        for _ in range(ascent_steps):
            num = (f(a) - f(b)).flatten(1).norm(dim=1)
            den = (a - b).flatten(1).norm(dim=1).clamp_min(1e-9)
            ratio = num / den
            best = max(best, float(ratio.detach().max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
        return best
    finally:
        f.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)


def has_certificate(metric: Metric) -> bool:
    """Whether robustsim can certify ``metric`` with a Lipschitz proof: the one rule every caller asks
    (:func:`network_lipschitz` raises the one-line reason when it cannot)."""
    try:
        network_lipschitz(metric)
    except RobustsimError:
        return False
    return True


def _no_certificate(metric: Metric, why: str) -> InputError:
    return InputError(
        f"metric {metric.name!r} {why}, so no Lipschitz certificate exists; certify its smoothed version instead "
        "(robustsim.certify.certify_smoothed, or certify --method smoothing) or attack it (robustsim.audit.run_audit, "
        "or robustsim audit)"
    )


_PIPELINE = ("embed", "_embed", "preprocess", "as_input", "distance", "embedding_distance", "forward")


def _check_pipeline(metric: Metric) -> EmbeddingMetric:
    """The metric computes ``net(preprocess(as_input(x)))`` with the base class's code: the part of the function the
    graph of :mod:`robustsim.nn.graph` does not record is then the cast, resize and normalisation proven here."""
    if not isinstance(metric, EmbeddingMetric):
        raise _no_certificate(metric, "is not an embedding metric")
    custom = [m for m in _PIPELINE[:-1] if getattr(type(metric), m) is not getattr(EmbeddingMetric, m)]
    if custom:  # the bound below covers net(resize-and-normalise(x)) only, not a pipeline of its own
        raise _no_certificate(
            metric,
            f"computes its embedding with its own {' and '.join(custom)} (not the network behind a resize and "
            "normalisation)",
        )
    replaced = [m for m in _PIPELINE if m in metric.__dict__]
    if replaced or type(metric.resizing) is not Resize:
        own = type(metric.resizing).__name__
        what = f"instance-level {replaced[0]}" if replaced else f"a resize of its own ({own})"
        raise _no_certificate(metric, f"runs an {what}, not the code whose bound is proven")
    moving = [(f"net.{name}" if name else "net", m) for name, m in metric.net.named_modules() if mode_dependent(m)]
    if moving:
        path, module = moving[0]
        raise InputError(
            f"metric {metric.name!r} has {type(module).__name__} ({path}) in training mode, where its output is not "
            "the function any bound covers (random, batch statistics or moving estimates); call metric.eval() "
            "before certifying"
        )
    return metric


#: caller sizes tried, in order, for a metric that keeps the caller's size when no size is asked
SIZES = (64, 32, 16, 8, 4, 224)


def _probe_pre(metric: EmbeddingMetric, image_hw: tuple[int, int] | None) -> tuple[tuple[int, int], torch.Tensor]:
    """(caller size, the preprocessed probe image) for ``image_hw``; with None the metric's own input size, or for
    a metric that keeps the caller's size the first of :data:`SIZES` its network accepts."""
    if image_hw is not None or metric.resizing.size is not None:
        hw = tuple(image_hw) if image_hw is not None else (metric.resizing.size, metric.resizing.size)
        hw = (int(hw[0]), int(hw[1]))
        return hw, metric.preprocess(probe((1, 3, *hw), metric.dtype, metric.device))
    for side in SIZES:
        pre = metric.preprocess(probe((1, 3, side, side), metric.dtype, metric.device))
        try:
            with torch.no_grad():
                metric.net(pre)
        except RuntimeError:  # a shape the network does not take
            continue
        return (side, side), pre
    raise InputError(
        f"metric {metric.name!r} keeps the caller's image size and its network takes none of {SIZES}; pass the "
        "image size (network_lipschitz(metric, (H, W)))"
    )


def _state_key(metric: EmbeddingMetric, hw: tuple[int, int] | None) -> tuple:
    modules = list(metric.net.modules())
    return (
        None if hw is None else (int(hw[0]), int(hw[1])),
        metric.dtype,
        str(metric.device),
        tuple((t.data_ptr(), t._version) for t in [*metric.parameters(), *metric.buffers()]),
        tuple(
            (m.training, "forward" in m.__dict__, len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules
        ),
        tuple(module_hooks()),
        getattr(metric.net, "stated_bound", None),
        metric.__dict__.get("lipschitz"),
    )


def network_lipschitz(metric: Metric, image_hw: tuple[int, int] | None = None) -> tuple[float, str]:
    """(L, source) for the network of an embedding metric, on the preprocessed input of caller images of
    ``image_hw``: the bound of the function that runs (:func:`robustsim.nn.compose.graph_lipschitz` on the graph
    :func:`robustsim.nn.graph.record` records, source ``"structure"``), else the constant the user declared with
    ``EmbeddingMetric(..., lipschitz=L)`` (source ``"declared"``) when a call has no rule. InputError when neither
    exists, and for metrics whose embedding is not ``net(preprocess(x))`` with the base class's code."""
    metric = _check_pipeline(metric)
    key = _state_key(metric, image_hw)
    kept = metric.__dict__.get("_lipschitz_memo", {})
    if key in kept:
        return kept[key]
    _, pre = _probe_pre(metric, image_hw)
    try:
        bound, source = graph_lipschitz(checked_record(metric.net, pre)), "structure"
    except NoRule as err:
        declared = metric.__dict__.get("lipschitz")
        if declared is None:
            raise _no_certificate(metric, f"has no Lipschitz guarantee ({err})") from None
        if not declared > 0 or not math.isfinite(declared):
            raise InputError(f"metric {metric.name!r} declares Lipschitz constant {declared}; it must be > 0") from None
        graph_lipschitz(checked_record(metric.net, pre, declared=float(declared)))
        bound, source = float(declared), "declared"
    stated = getattr(metric.net, "stated_bound", None)
    if stated is not None:  # a card's number, rounded up: the max of a proven bound and any number is a bound
        bound = max(bound, float(stated))
    if len(kept) > 16:
        kept = {}
    kept[key] = (bound, source)
    metric.__dict__["_lipschitz_memo"] = kept
    return bound, source


def declared_constant(metric: EmbeddingMetric) -> float | None:
    """The declared constant the certificate uses (None when the structure proves one)."""
    bound, source = network_lipschitz(metric)
    return bound if source == "declared" else None


def preprocess_lipschitz(metric: EmbeddingMetric, image_hw: tuple[int, int]) -> float:
    """l2 Lipschitz constant of the metric's preprocessing for caller images of ``image_hw``: its resize
    (:func:`robustsim.metrics.preprocess.resize_norm`, whatever interpolation, antialiasing or crop it applies,
    with the weights the metric's dtype computes) times the normalisation's 1 / min(std) (the mean is a shift).
    Metrics that override ``preprocess`` must provide ``preprocess_lipschitz``."""
    own = getattr(type(metric), "preprocess_lipschitz", None)
    if own is not None:
        return float(own(metric, image_hw))
    if type(metric).preprocess is not EmbeddingMetric.preprocess:
        raise RobustsimError(
            f"metric {metric.name!r} preprocesses its input in its own way; give it a preprocess_lipschitz(hw) "
            "method to certify it"
        )
    hw = (int(image_hw[0]), int(image_hw[1]))
    return resize_norm(metric.resizing, hw, metric.dtype) / float(metric.std.abs().min())


def input_lipschitz(metric: Metric, image_hw: tuple[int, int]) -> tuple[float, str]:
    """(L, source): the l2 Lipschitz constant of ``metric.embed`` with respect to the caller's
    [0, 1] image of size ``image_hw``: network bound times preprocessing bound. Every certificate
    uses this one function."""
    l_net, source = network_lipschitz(metric, tuple(image_hw))
    assert isinstance(metric, EmbeddingMetric)
    return l_net * preprocess_lipschitz(metric, tuple(image_hw)), source
