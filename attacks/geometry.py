"""Attack geometry over :mod:`robustsim.ball` (per-sample radii), and per-row noise that makes a triplet's random
starts independent of its batch, shard and process."""

from __future__ import annotations

import torch

from robustsim.ball import NORMS, Ball, Norm, ball

__all__ = [
    "NORMS",
    "Ball",
    "Norm",
    "RowNoise",
    "ascent_direction",
    "in_threat_model",
    "norms",
    "project",
    "random_start",
    "rows_of",
]


def norms(delta: torch.Tensor, norm: Norm | Ball) -> torch.Tensor:
    """(B,) the norm of each row of ``delta``."""
    return ball(norm).measure(delta)


def in_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm | Ball) -> torch.Tensor:
    """(B,) True where ``x_adv`` lies in the eps ball around ``x`` (float slack 1e-5 relative) and in [0, 1]."""
    return ball(norm).contains(x_adv, x, eps)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: Norm | Ball) -> torch.Tensor:
    """Project onto {||x' - x|| <= eps} and then the box [0, 1] (:meth:`Ball.project`)."""
    return ball(norm).project(x_adv, x, eps)


def ascent_direction(grad: torch.Tensor, norm: Norm | Ball) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign for linf, normalised gradient for l2."""
    return ball(norm).ascent(grad)


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


def random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: Norm | Ball, generator: torch.Generator | RowNoise
) -> torch.Tensor:
    """A uniformly random point of the ball (linf: uniform cube; l2: uniform direction and volume), from
    ``generator``'s stream (per-row :class:`RowNoise` or one shared generator)."""

    def draw(shape: tuple[int, ...], normal: bool) -> torch.Tensor:
        if isinstance(generator, RowNoise):
            return generator.randn(shape, x.device) if normal else generator.rand(shape, x.device)
        return (torch.randn if normal else torch.rand)(shape, generator=generator, device=generator.device)

    return ball(norm).random_start(x, eps, draw)
