"""Lipschitz constants: the bound a model's structure guarantees (:func:`robustsim.nn.bounds.lipschitz_bound`,
re-exported here), the exact norm of a metric's preprocessing (resize, normalisation) for the caller's image
size, and an empirical lower estimate."""

from __future__ import annotations

import torch
from torch import nn

from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.metrics.preprocess import resize_norm
from robustsim.nn.bounds import lipschitz_bound, mode_dependent


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


def _no_certificate(metric: Metric, why: str) -> RobustsimError:
    return RobustsimError(
        f"metric {metric.name!r} {why}, so no Lipschitz certificate exists; certify its smoothed version instead "
        "(robustsim.certify.certify_smoothed, or certify --method smoothing) or attack it (robustsim.audit.run_audit, "
        "or robustsim audit)"
    )


def blocking_module(net: nn.Module) -> str | None:
    """``net.<path> (Type)`` of the first module (in forward order) with no Lipschitz guarantee, None when none
    blocks alone (the failure then lies in how modules compose)."""
    for name, module in net.named_modules():
        if type(module) is nn.Sequential:
            continue
        try:
            lipschitz_bound(module)
        except RobustsimError:
            return f"net.{name} ({type(module).__name__})" if name else f"net ({type(module).__name__})"
    return None


def network_lipschitz(metric: Metric) -> tuple[float, str]:
    """(L, source) for the network of an embedding metric: the bound its structure proves
    (:func:`lipschitz_bound`, source ``"structure"``), else the constant the user declared with
    ``EmbeddingMetric(..., lipschitz=L)`` (source ``"declared"``). RobustsimError when neither exists, and for
    metrics whose embedding is not ``net(preprocess(x))`` with the base class's resize and normalisation (an
    ensemble, a custom preprocessing): the constant would not cover their pipeline."""
    if not isinstance(metric, EmbeddingMetric):
        raise _no_certificate(metric, "is not an embedding metric")
    pipeline = ("embed", "_embed", "preprocess", "distance", "embedding_distance")
    custom = [m for m in pipeline if getattr(type(metric), m) is not getattr(EmbeddingMetric, m)]
    if custom:  # the bound below covers net(resize-and-normalise(x)) only, not a pipeline of its own
        raise _no_certificate(
            metric,
            f"computes its embedding with its own {' and '.join(custom)} (not the network behind a resize and "
            "normalisation)",
        )
    moving = [(f"net.{name}" if name else "net", m) for name, m in metric.net.named_modules() if mode_dependent(m)]
    if moving:
        path, module = moving[0]
        raise RobustsimError(
            f"metric {metric.name!r} has {type(module).__name__} ({path}) in training mode, where its output is not "
            "the function any bound covers (random, batch statistics or moving estimates); call metric.eval() "
            "before certifying"
        )
    try:
        return lipschitz_bound(metric.net), "structure"
    except RobustsimError as err:
        reason, declared = str(err), getattr(metric, "lipschitz", None)
    if declared is None:
        where = blocking_module(metric.net)
        raise _no_certificate(metric, f"has no Lipschitz guarantee ({where + ': ' if where else ''}{reason})")
    if not declared > 0:
        raise RobustsimError(f"metric {metric.name!r} declares Lipschitz constant {declared}; it must be > 0")
    return float(declared), "declared"


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
    l_net, source = network_lipschitz(metric)
    assert isinstance(metric, EmbeddingMetric)
    return l_net * preprocess_lipschitz(metric, tuple(image_hw)), source
