"""Certified l2 radii for the 2AFC decision of a Lipschitz embedding metric, for every threat model.

Notation: f the embedding (L-Lipschitz w.r.t. the caller's image, preprocessing included, see
:func:`robustsim.certify.lipschitz.input_lipschitz`), phi = f / ||f||, a = f(x_ref), f_i = f(x_i),
alpha_i = angle(a, f_i). The metric picks x1 iff <a, u> > 0 with u = phi(x1) - phi(x0), i.e. iff
alpha_1 < alpha_0.

- ``ref`` moves (x0, x1 fixed): <f(x_ref + delta), u> moves by at most L ||delta|| ||u||, so
  R = |<a, u>| / (L ||u||) = ||a|| |d1 - d0| / (L ||phi(x0) - phi(x1)||); no assumption on ||f||.
  ``mode="lipsim"`` gives the published R = |d1 - d0| / ||phi(x0) - phi(x1)||, sound only when
  ||a|| >= 1 and L = 1 (it over-claims below).
- ``x0`` or ``x1`` moves: if ||b - f_i|| <= r < ||f_i|| then angle(b, f_i) <= arcsin(r / ||f_i||) (the
  tangent from the origin to the ball), so alpha_i moves by at most that; the decision holds while
  arcsin(L R / ||f_i||) < |alpha_0 - alpha_1|: R = ||f_i|| sin(min(|alpha_0 - alpha_1|, pi/2)) / L.
- ``all`` three move by at most eps each: by the triangle inequality on angles, alpha_1 - alpha_0 moves
  by at most 2 theta_a + theta_0 + theta_1 (theta_z = arcsin(L eps / ||f(z)||)): R is the largest eps
  with 2 theta_a + theta_0 + theta_1 < |alpha_0 - alpha_1| (found by bisection; the sum is increasing).
  A joint ball (||(delta_ref, delta_0, delta_1)|| <= eps, the audit's ``all``) lies inside it.

Rounding: embeddings come in float64 with bounds ||e - f_exact|| <= delta
(:mod:`robustsim.certify.rounding`); every formula below uses the worst case within them, so a
reported radius never exceeds the exact-arithmetic one. Exact ties get radius 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from robustsim.certify.lipschitz import input_lipschitz, network_lipschitz
from robustsim.certify.rounding import embed_with_error

from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.threat import TARGETS, Target

Mode = Literal["sound", "lipsim"]


def require_lipschitz(metric: Metric) -> float:
    """The network's guaranteed Lipschitz constant (from its structure, or declared); refuse metrics
    without one."""
    return network_lipschitz(metric)[0]


def _zeros_like(e: torch.Tensor) -> torch.Tensor:
    return torch.zeros(e.shape[0], dtype=torch.float64, device=e.device)


def radius_from_embeddings(
    e_ref: torch.Tensor,
    e0: torch.Tensor,
    e1: torch.Tensor,
    lipschitz: float,
    mode: Mode = "sound",
    target: Target = "ref",
    delta: tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """Per-triplet certified radius (float64) from embeddings (B, D) of ref, x0, x1 (module docstring).
    ``delta`` bounds each embedding's distance to the exact one (0 for exact embeddings)."""
    if mode not in ("sound", "lipsim"):
        raise ValueError(f"mode must be 'sound' or 'lipsim', got {mode!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if mode == "lipsim" and target != "ref":
        raise ValueError("the published (lipsim) formula exists for the reference only; use mode='sound'")
    a, f0, f1 = (t.double() for t in (e_ref, e0, e1))
    da, d0, d1 = (torch.as_tensor(d, dtype=torch.float64, device=a.device).expand(a.shape[0]) for d in delta)
    na, n0, n1 = a.norm(dim=1), f0.norm(dim=1), f1.norm(dim=1)
    if target == "ref":
        return _ref_radius(a, f0, f1, na, n0, n1, da, d0, d1, lipschitz, mode)
    # angles from computed embeddings, widened by each embedding's angular uncertainty asin(delta / ||e||)
    cos = lambda u, v, nu, nv: ((u * v).sum(1) / (nu * nv).clamp_min(1e-300)).clamp(-1, 1)  # noqa: E731
    alpha0, alpha1 = torch.arccos(cos(a, f0, na, n0)), torch.arccos(cos(a, f1, na, n1))
    slack = lambda d, n: torch.where(d < n, torch.arcsin((d / n.clamp_min(1e-300)).clamp(max=1)), math.pi)  # noqa: E731
    gap = (alpha0 - alpha1).abs() - 2 * slack(da, na) - slack(d0, n0) - slack(d1, n1)
    gap = gap.clamp(min=0.0, max=math.pi / 2 + 1e-12)
    lo = [n - d for n, d in ((na, da), (n0, d0), (n1, d1))]  # exact norms are at least these
    if target in ("x0", "x1"):
        norm = lo[1] if target == "x0" else lo[2]
        r = norm.clamp_min(0) * torch.sin(gap.clamp(max=math.pi / 2)) / lipschitz
    else:
        r = _all_radius(gap, lo[0], lo[1], lo[2], lipschitz)
    return torch.where(gap > 0, r, _zeros_like(a))


def _ref_radius(a, f0, f1, na, n0, n1, da, d0, d1, lipschitz: float, mode: Mode) -> torch.Tensor:
    """|<a, u>| / (L ||u||) with the worst case of the rounding: ||u - u_exact|| <= eps_u and
    ||a - a_exact|| <= da give |<a_exact, u_exact>| >= |<a, u>| - da (||u|| + eps_u) - ||a|| eps_u."""
    u = f1 / n1.clamp_min(1e-300)[:, None] - f0 / n0.clamp_min(1e-300)[:, None]
    u_norm = u.norm(dim=1)
    margin = (a * u).sum(1).abs()
    # ||e/||e|| - g/||g|||| <= 2 ||e - g|| / ||e||
    eps_u = 2 * d0 / n0.clamp_min(1e-300) + 2 * d1 / n1.clamp_min(1e-300)
    if mode == "lipsim":
        margin = margin / na.clamp_min(1e-300)  # |<phi(x), u>| = |d1 - d0|
        lipschitz, da, eps_u = 1.0, da / na.clamp_min(1e-300), eps_u
        na = torch.ones_like(na)
    low = margin - da * (u_norm + eps_u) - na * eps_u
    r = low / (lipschitz * (u_norm + eps_u).clamp_min(1e-300))
    ok = (u_norm > eps_u) & (low > 0)
    return torch.where(ok, r, torch.zeros_like(r))


def _all_radius(gap: torch.Tensor, na: torch.Tensor, n0: torch.Tensor, n1: torch.Tensor, lipschitz: float):
    """Largest eps with 2 asin(L eps / na) + asin(L eps / n0) + asin(L eps / n1) < gap (bisection)."""
    top = torch.minimum(torch.minimum(na, n0), n1).clamp_min(0) / lipschitz  # asin needs L eps < every norm
    lo, hi = torch.zeros_like(gap), top.clone()

    def total(eps: torch.Tensor) -> torch.Tensor:
        s = lambda n: torch.arcsin((lipschitz * eps / n.clamp_min(1e-300)).clamp(max=1.0))  # noqa: E731
        return 2 * s(na) + s(n0) + s(n1)

    for _ in range(60):
        mid = (lo + hi) / 2
        ok = total(mid) < gap
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo


def certified_radius(
    metric: Metric,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    mode: Mode = "sound",
    target: Target = "ref",
) -> torch.Tensor:
    """(B,) float64 l2 radius, in the caller's pixels, within which the metric's 2AFC choice cannot change
    when ``target`` moves (``all``: each image by at most the radius). Radii of triplets whose computed
    decision is a tie or disagrees with exact arithmetic are 0."""
    L, _ = input_lipschitz(metric, tuple(ref.shape[-2:]))
    assert isinstance(metric, EmbeddingMetric)
    e, delta = embed_with_error(metric, torch.cat([ref, x0, x1]))
    (a, f0, f1), (da, d0, d1) = e.split(ref.shape[0]), delta.split(ref.shape[0])
    return radius_from_embeddings(a, f0, f1, L, mode, target, (da, d0, d1))


def embedding_distance_bound(metric: Metric, x: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) upper bound on the exact d(x, x + delta) over ||delta||_2 <= eps in the caller's pixels.

    ||phi(a) - phi(b)|| <= ||a - b|| / min(||a||, ||b||), so with ||f(x + delta) - f(x)|| <= L eps:
    ||phi(x + delta) - phi(x)|| <= L eps / (||f(x)|| - L eps) and d = ||.||^2 / 2, capped at 2
    (the largest possible 1 - cos). ||f(x)|| is taken at its lower bound given the rounding.
    """
    L, _ = input_lipschitz(metric, tuple(x.shape[-2:]))
    assert isinstance(metric, EmbeddingMetric)
    e, delta = embed_with_error(metric, x)
    slack = e.norm(dim=1) - delta - L * eps
    chord = torch.where(slack > 0, L * eps / slack.clamp_min(1e-300), torch.full_like(slack, 2.0))
    return (chord.clamp(max=2.0) ** 2 / 2).clamp(max=2.0)
