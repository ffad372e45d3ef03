"""Lipschitz constants: the bound a model's structure guarantees, the exact norm of a metric's
preprocessing (resize, normalisation) for the caller's image size, and an empirical lower estimate."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from robustsim.errors import RobustsimError
from robustsim.metrics.base import EmbeddingMetric, Metric

#: parameter-free modules that are 1-Lipschitz in l2 (elementwise 1-Lipschitz or reshapes)
ONE_LIPSCHITZ = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.LeakyReLU, nn.Tanh, nn.Dropout)


def lipschitz_bound(module: nn.Module) -> float:
    """The l2 Lipschitz constant guaranteed by the structure: a module's own ``lipschitz_bound``,
    else the product over an ``nn.Sequential``'s children, else 1 for parameter-free 1-Lipschitz
    modules. Raises RobustsimError for a module with no guarantee (assumption: composition only).
    """
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        own = own()
    if isinstance(own, (int, float)):
        return float(own)
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for child in module:
            bound *= lipschitz_bound(child)
        return bound
    if isinstance(module, ONE_LIPSCHITZ):
        return 1.0
    raise RobustsimError(
        f"{type(module).__name__} has no Lipschitz guarantee; build the model from robustsim.nn layers "
        "or set a proven `lipschitz_bound` attribute on it"
    )


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


def _no_certificate(metric: Metric, why: str) -> RobustsimError:
    return RobustsimError(
        f"metric {metric.name!r} {why}, so no Lipschitz certificate exists; "
        f"use `robustsim certify --method smoothing` or `robustsim audit --metric {metric.name}`"
    )


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
    try:
        return lipschitz_bound(metric.net), "structure"
    except RobustsimError:
        declared = getattr(metric, "lipschitz", None)
    if declared is None:
        raise _no_certificate(metric, "has no Lipschitz guarantee")
    if not declared > 0:
        raise RobustsimError(f"metric {metric.name!r} declares Lipschitz constant {declared}; it must be > 0")
    return float(declared), "declared"


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of the 1-D linear interpolation ``resize`` applies along one axis
    (align_corners=False, no antialiasing), read off by interpolating the identity."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # n_in signals of length n_in
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


@functools.lru_cache(maxsize=256)
def resize_norm(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    """Exact l2 operator norm of the bilinear resize from ``in_hw`` to ``out_hw`` (per channel; the same on
    every channel). The resize is separable, X -> A_h X A_w^T, so its norm is ||A_h||_2 ||A_w||_2."""
    if tuple(in_hw) == tuple(out_hw):
        return 1.0
    a_h, a_w = interpolation_matrix(in_hw[0], out_hw[0]), interpolation_matrix(in_hw[1], out_hw[1])
    return float(torch.linalg.matrix_norm(a_h, ord=2) * torch.linalg.matrix_norm(a_w, ord=2))


def preprocess_lipschitz(metric: EmbeddingMetric, image_hw: tuple[int, int]) -> float:
    """l2 Lipschitz constant of the metric's preprocessing for caller images of ``image_hw``: the resize
    to ``input_size`` (exact, :func:`resize_norm`) times the normalisation's 1 / min(std) (the mean is a
    shift and costs nothing). Metrics that override ``preprocess`` must provide ``preprocess_lipschitz``."""
    own = getattr(type(metric), "preprocess_lipschitz", None)
    if own is not None:
        return float(own(metric, image_hw))
    if type(metric).preprocess is not EmbeddingMetric.preprocess:
        raise RobustsimError(
            f"metric {metric.name!r} preprocesses its input in its own way; give it a preprocess_lipschitz(hw) "
            "method to certify it"
        )
    size = metric.input_size
    out_hw = tuple(image_hw) if size is None else (size, size)
    return resize_norm(tuple(image_hw), out_hw) / float(metric.std.abs().min())


def input_lipschitz(metric: Metric, image_hw: tuple[int, int]) -> tuple[float, str]:
    """(L, source): the l2 Lipschitz constant of ``metric.embed`` with respect to the caller's
    [0, 1] image of size ``image_hw``: network bound times preprocessing bound. Every certificate
    uses this one function."""
    l_net, source = network_lipschitz(metric)
    assert isinstance(metric, EmbeddingMetric)
    return l_net * preprocess_lipschitz(metric, tuple(image_hw)), source
