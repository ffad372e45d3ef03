"""Threat-model geometry: l2 / linf balls intersected with the [0, 1] box, per-sample radii."""

from __future__ import annotations

import torch

from robustsim.threat import NORMS, Norm

__all__ = ["NORMS", "Norm", "ascent_direction", "in_threat_model", "norms", "project", "random_start"]


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *[1] * (like.dim() - 1))


def norms(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def in_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """(B,) True where ``x_adv`` lies in the eps ball around ``x`` (float slack 1e-5 relative) and in [0, 1]."""
    dims = tuple(range(1, x.dim()))
    inside = norms(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7
    return inside & (x_adv.amin(dim=dims) >= 0) & (x_adv.amax(dim=dims) <= 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project onto {||x' - x|| <= eps} and then the box [0, 1]. Since x is in the box, clamping only
    shrinks each |delta_i|, so the result lies in both sets."""
    delta = x_adv - x
    if norm == "linf":
        e = _view(eps, x)
        delta = torch.maximum(torch.minimum(delta, e), -e)
    else:
        n = norms(delta, "l2").clamp_min(1e-12)
        delta = delta * _view(torch.clamp(eps / n, max=1.0), x)
    return (x + delta).clamp(0.0, 1.0)


def ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign for linf, normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(norms(grad, "l2").clamp_min(1e-12), grad)


def random_start(x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the ball (linf: uniform cube; l2: uniform direction and volume)."""
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) if norm == "linf" else None
    if norm == "linf":
        delta = (2 * noise - 1) * _view(eps, x)
    else:
        g = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        g = g / _view(norms(g, "l2").clamp_min(1e-12), x)
        r = torch.rand(x.shape[0], generator=generator, device="cpu").to(x) ** (1.0 / x[0].numel())
        delta = g * _view(eps * r, x)
    return project(x + delta, x, eps, norm)
