"""A norm ball as one object (foolbox's ``LpDistance``): it measures perturbations, tells whether a point lies
inside (ball and [0, 1] box), projects onto both, draws random starts, gives the steepest-ascent direction, checks
and writes its radii, and says how its axis reads in a figure. Every module asks a :class:`Ball` (``ball("l2")``,
``ThreatModel.ball``) instead of branching on the norm's name; this is the only module that knows the names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from robustsim.errors import InputError

if TYPE_CHECKING:  # the CLI's help and argument checks run without importing torch
    import torch

Norm = Literal["l2", "linf"]

MAX_L2 = 1e4  # an l2 radius above the diameter of every [0, 1] image of up to 10^8 values moves nothing more
LINF_RADII = tuple(k / 255 for k in (1, 2, 4, 8, 16))  # the linf radii papers report
SLACK = (1e-5, 1e-7)  # membership's float slack: relative, absolute

# draw(shape, normal) -> a tensor of that shape on the images' device (standard normal, else uniform on [0, 1))
Draw = Callable[[tuple[int, ...], bool], "torch.Tensor"]


def format_eps(e: float) -> str:
    """An epsilon as text, the shorter of its decimal (``0.5``) and, when it is a whole multiple of 1/255,
    its fraction (``36/255``): every report, table, card and figure writes radii with this function."""
    decimal = f"{e:.6g}"
    k = e * 255
    if 0 < e < 1e9 and abs(k - round(k)) < 1e-6 * max(1.0, k):
        fraction = f"{round(k)}/255"
        if len(fraction) < len(decimal):
            return fraction
    return decimal


def parse_eps(text: str) -> float:
    """``'36/255'`` or ``'0.5'`` -> a finite float >= 0 (InputError otherwise)."""
    try:
        value = float(Fraction(text.strip()))
    except OverflowError:
        raise InputError(f"{text.strip()!r} is not a finite number") from None
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{text.strip()!r} is not a number; write e.g. 0.5,1 or 36/255,72/255") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{text.strip()!r} is not a radius; radii are finite numbers >= 0")
    return value


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *[1] * (like.dim() - 1))


def linf_like(e: float) -> bool:
    """True when ``e`` is one of LINF_RADII, exactly (up to float rounding) or written to three decimals."""
    return any(abs(e - r) <= 1e-9 or e == round(r, 3) for r in LINF_RADII)


class Ball:
    """The ``name`` ball (lp with ``p``) around an image, intersected with the [0, 1] box."""

    name: Norm
    p: float
    foolbox: str  # the norm's name in foolbox and pyautoattack ("L2", "Linf")
    axis_label: str  # a figure's x axis for its radii

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """(B,) the norm of each row of ``delta``."""
        raise NotImplementedError

    def _shrink(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``delta`` moved to the nearest point of the radius-``eps`` ball (per row)."""
        raise NotImplementedError

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm for ``grad`` (per row)."""
        raise NotImplementedError

    def random_delta(self, like: torch.Tensor, eps: torch.Tensor, draw: Draw) -> torch.Tensor:
        """A uniformly random point of the radius-``eps`` ball (per row), drawn with ``draw``."""
        raise NotImplementedError

    def check(self, e: float) -> None:
        """InputError when ``e`` is no radius this ball takes."""

    def implausible(self, eps: tuple[float, ...]) -> str | None:
        """A one-line warning when the radii look written for another norm (None when they look right)."""
        return None

    def l2_radius(self, e: float, dim: int) -> float:
        """The l2 radius whose ball contains this ball of radius ``e`` in ``dim`` dimensions."""
        return e

    def axis_value(self, e: float) -> float:
        """Where radius ``e`` sits on a figure's x axis."""
        return e

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """(B,) True where ``x_adv`` lies in the eps ball around ``x`` (float slack 1e-5 relative) and in [0, 1]."""
        dims = tuple(range(1, x.dim()))
        inside = self.measure(x_adv - x) <= eps * (1 + SLACK[0]) + SLACK[1]
        return inside & (x_adv.amin(dim=dims) >= 0) & (x_adv.amax(dim=dims) <= 1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Project onto {||x' - x|| <= eps} and then the box [0, 1]. Since x is in the box, clamping only shrinks
        each |delta_i|, so the result lies in both sets."""
        return (x + self._shrink(x_adv - x, eps)).clamp(0.0, 1.0)

    def random_start(self, x: torch.Tensor, eps: torch.Tensor, draw: Draw) -> torch.Tensor:
        """A uniformly random point of the ball around ``x``, projected into the box."""
        return self.project(x + self.random_delta(x, eps, draw), x, eps)

    def __repr__(self) -> str:
        return f"ball({self.name!r})"


class L2Ball(Ball):
    name, p, foolbox, axis_label = "l2", 2.0, "L2", "epsilon (l2)"

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def _shrink(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = self.measure(delta).clamp_min(1e-12)
        return delta * _view((eps / n).clamp(max=1.0), delta)

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _view(self.measure(grad).clamp_min(1e-12), grad)

    def random_delta(self, like: torch.Tensor, eps: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Uniform direction and volume: a normalised Gaussian times eps * u^(1/dim)."""
        g = draw(tuple(like.shape), True).to(like)
        g = g / _view(self.measure(g).clamp_min(1e-12), like)
        r = draw((like.shape[0],), False).to(like) ** (1.0 / like[0].numel())
        return g * _view(eps * r, like)

    def check(self, e: float) -> None:
        if e > MAX_L2:
            raise InputError(
                f"an l2 radius of {e:g} exceeds the diameter of any [0, 1] image of up to 10^8 values "
                f"(radii up to {MAX_L2:g}); did you mean a smaller radius?"
            )

    def implausible(self, eps: tuple[float, ...]) -> str | None:
        """The linf radii papers use, k/255 for k in 1, 2, 4, 8, 16, written exactly or to three decimals (8/255 or
        0.031); as l2 radii they move a 64 px image by < 0.001 per pixel. Other small radii (0.02, 0.05) pass."""
        small = [e for e in eps if linf_like(e)]
        if small:
            return (
                f"warning: l2 radius {format_eps(small[0])} ({small[0]:.4f}) is the size of a linf radius; "
                "l2 radii of images are ~0.1-3 (did you mean --norm linf?)"
            )
        return None


class LinfBall(Ball):
    name, p, foolbox, axis_label = "linf", math.inf, "Linf", "epsilon (linf, x 1/255)"

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def _shrink(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        e = _view(eps, delta)
        return delta.minimum(e).maximum(-e)

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def random_delta(self, like: torch.Tensor, eps: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Uniform in the cube."""
        return (2 * draw(tuple(like.shape), False).to(like) - 1) * _view(eps, like)

    def check(self, e: float) -> None:
        if e >= 1:
            raise InputError(
                f"a linf radius of {e:g} lets every pixel take any value in [0, 1]; did you mean {e:g}/255?"
            )

    def l2_radius(self, e: float, dim: int) -> float:
        """||delta||_2 <= sqrt(dim) ||delta||_inf."""
        return e * math.sqrt(dim)

    def axis_value(self, e: float) -> float:
        return e * 255


L2, LINF = L2Ball(), LinfBall()
BALLS: dict[str, Ball] = {b.name: b for b in (L2, LINF)}
NORMS: tuple[str, ...] = tuple(BALLS)


def ball(norm: str | Ball) -> Ball:
    """The ball of a norm name (``"l2"`` / ``"linf"``), or ``norm`` itself (InputError for any other name)."""
    if isinstance(norm, Ball):
        return norm
    if isinstance(norm, str) and norm in BALLS:
        return BALLS[norm]
    raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def ball_of_p(p: float) -> Ball | None:
    """The ball whose norm is the lp norm ``p`` (None for an lp robustsim has no ball for)."""
    return next((b for b in BALLS.values() if b.p == p), None)
