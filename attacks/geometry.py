"""Threat-model geometry: l2 / linf balls intersected with the [0, 1] box, per-sample radii."""

from __future__ import annotations

import torch

from robustsim.threat import NORMS, Norm

__all__ = [
    "NORMS",
    "Norm",
    "RowNoise",
    "ascent_direction",
    "in_threat_model",
    "norms",
    "project",
    "random_start",
    "rows_of",
]


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


class RowNoise:
    """Random numbers that depend only on (seed, each row's triplet index, how many draws that row made):
    a triplet gets the same random starts whichever batch, shard or process attacks it. ``rows(idx)`` is
    a view on some rows (sharing their counters)."""

    def __init__(self, seed: int, ids: torch.Tensor, counts: dict[int, int] | None = None) -> None:
        self.seed, self.ids = int(seed), [int(i) for i in ids.tolist()]
        self.counts = counts if counts is not None else {}

    def rows(self, idx: torch.Tensor) -> RowNoise:
        return RowNoise(self.seed, torch.tensor([self.ids[int(i)] for i in idx.tolist()]), self.counts)

    def _draw(self, fn, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """Each row from its own generator on ``device`` (no host-side tensor to copy; on a CPU the same numbers as
        ever, a CUDA generator draws its own)."""
        out = []
        for i in self.ids:
            n = self.counts.get(i, 0)
            self.counts[i] = n + 1
            g = torch.Generator(device=device)
            g.manual_seed((self.seed * 1_000_003 + i * 7919 + n * 104_729) % (2**63 - 1))
            out.append(fn(shape[1:], generator=g, device=device))
        return torch.stack(out) if out else torch.empty(shape, device=device)

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        return self._draw(torch.randn, shape, device)

    def rand(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        return self._draw(torch.rand, shape, device)


def rows_of(generator: torch.Generator | RowNoise | None, rows: torch.Tensor):
    """The generator for a subset of rows: a row view of per-row noise, the shared generator otherwise."""
    return generator.rows(rows) if isinstance(generator, RowNoise) else generator


def _rand(shape: tuple[int, ...], generator: torch.Generator | RowNoise, normal: bool, device) -> torch.Tensor:
    if isinstance(generator, RowNoise):
        return generator.randn(shape, device) if normal else generator.rand(shape, device)
    return (torch.randn if normal else torch.rand)(shape, generator=generator, device=generator.device)


def random_start(x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator: torch.Generator | RowNoise) -> torch.Tensor:
    """A uniformly random point of the ball (linf: uniform cube; l2: uniform direction and volume)."""
    if norm == "linf":
        delta = (2 * _rand(tuple(x.shape), generator, False, x.device).to(x) - 1) * _view(eps, x)
    else:
        g = _rand(tuple(x.shape), generator, True, x.device).to(x)
        g = g / _view(norms(g, "l2").clamp_min(1e-12), x)
        r = _rand((x.shape[0],), generator, False, x.device).to(x) ** (1.0 / x[0].numel())
        delta = g * _view(eps * r, x)
    return project(x + delta, x, eps, norm)
