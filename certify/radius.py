"""Certified l2 radii for the 2AFC decision of a Lipschitz embedding metric, for every threat model, covering
the decision the deployed metric computes (its dtype's rounding included).

Notation: f the exact embedding (L-Lipschitz w.r.t. the caller's image, preprocessing included, see
:func:`robustsim.certify.lipschitz.input_lipschitz`), F a computed one (any evaluation), phi = v / ||v||. The
metric computes d_i = 1 - cos(F(x_ref), F(x_i)) with the rounding of :func:`~robustsim.certify.rounding.cosine_slack`
(c), so it picks x1 whenever the exact cos(F_ref, F_1) - cos(F_ref, F_0) of its computed embeddings exceeds 2c.

For each image z the certifier knows an estimate e_z (float32 or float64 embeddings) with ||e_z - f(z)|| <= est_z,
and the deployed rounding ||F(z') - f(z')|| <= dep_z(r) (:class:`~robustsim.certify.rounding.Rounding`); so every
F(z') with ||z' - z|| <= r (r = 0 for an image that does not move) lies within rho_z(r) = est_z + dep_z(r) + L r
of e_z.

- ``ref`` moves: with U = phi(F_1) - phi(F_0), ||U - u|| <= e_U = sum_i chord(rho_i, ||e_i||) (u = phi(e_1) -
  phi(e_0); :func:`chord`: 2 sin(arcsin(rho_i / ||e_i||) / 2), the angle-based distance of normalised vectors),
  and <F_ref, U> >= |<e_ref, u>| - rho_ref (||u|| + e_U) - ||e_ref|| e_U; the decision holds while that exceeds
  2c ||F_ref|| (||F_ref|| <= ||e_ref|| + rho_ref), i.e. while
  rho_ref < (|<e_ref, u>| - ||e_ref|| (e_U + 2c)) / (||u|| + e_U + 2c): a linear condition on r.
  With exact estimates and no rounding this is |<f(x), u>| / (L ||u||), the sound radius (no assumption on
  ||f||). ``mode="lipsim"`` gives the published R = |d1 - d0| / ||phi(x0) - phi(x1)|| of the estimates, sound
  only when ||f(x)|| >= 1, L = 1 and in exact arithmetic (it over-claims otherwise).
- ``x0``, ``x1`` or ``all`` move: F(z') lies within the angle theta_z = arcsin(rho_z / ||e_z||) of e_z, so the
  computed angles between F_ref and F_i lie within theta_ref + theta_i of the estimates' alpha_i; the decision
  holds while cos(alpha_win + theta_ref + theta_win) - cos(alpha_lose - theta_ref - theta_lose) > 2c, increasing
  in r: the largest such r is found by bisection. ``all``: each image within r (the audit's joint ball lies
  inside).

A triplet whose computed decision is a tie, or differs from the exact one, fails at r = 0: radius 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from robustsim.certify.lipschitz import input_lipschitz, network_lipschitz
from robustsim.certify.rounding import Rounding, cosine_slack, embed_with_error, float64_copy
from robustsim.errors import InputError
from robustsim.metrics.base import EmbeddingMetric, Metric, evaluating
from robustsim.scoring import two_afc_choice
from robustsim.threat import TARGETS, Target

Mode = Literal["sound", "lipsim"]
MODES: tuple[str, ...] = ("sound", "lipsim")
RADIUS_TOL = 1e-2  # a reported radius is within 1 % of the most the method proves for its triplet (lipschitz_batch)
ANGLE_EPS = 1e-12  # float64 error of an angle computed as 2 asin(||phi(a) - phi(b)|| / 2)


def _as_batch(v: torch.Tensor | float, n: int, device) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64, device=device).expand(n).clone()


def _angle(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Angle between rows of unit vectors, accurate for small angles."""
    return 2 * torch.arcsin(((p - q).norm(dim=1) / 2).clamp(max=1.0))


def radius_from_embeddings(
    e_ref: torch.Tensor,
    e0: torch.Tensor,
    e1: torch.Tensor,
    lipschitz: float,
    mode: Mode = "sound",
    target: Target = "ref",
    delta: Sequence[torch.Tensor | float] = (0.0, 0.0, 0.0),
    deployed: Sequence[Rounding] | None = None,
    slack: float = 0.0,
) -> torch.Tensor:
    """Per-triplet certified radius (float64) from estimates (B, D) of the embeddings of ref, x0, x1, each within
    ``delta`` of the exact one (module docstring). With ``deployed`` (the rounding of the metric's computation of
    each image) and ``slack`` (its cosine rounding), the radius covers the deployed metric's decision; without
    them, the exact-arithmetic decision."""
    if mode not in ("sound", "lipsim"):
        raise InputError(f"mode must be 'sound' or 'lipsim', got {mode!r}")
    if target not in TARGETS:
        raise InputError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if mode == "lipsim" and target != "ref":
        raise InputError("the published (lipsim) formula exists for the reference only; use mode='sound'")
    est = [e.double() for e in (e_ref, e0, e1)]
    n, dev = est[0].shape[0], est[0].device
    err = [_as_batch(d, n, dev) for d in delta]
    if deployed is None:
        deployed = [Rounding(torch.zeros(n, dtype=torch.float64, device=dev), 0.0, 0.0, 0.0) for _ in range(3)]
    if mode == "lipsim":
        return _lipsim_radius(*est)
    moving = {"ref": (True, False, False), "x0": (False, True, False), "x1": (False, False, True)}.get(
        target, (True, True, True)
    )
    if target == "ref":
        return _ref_radius(est, err, deployed, lipschitz, 2 * slack)
    return _angle_radius(est, err, deployed, moving, lipschitz, 2 * slack)


def _lipsim_radius(a: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """The published formula on the estimates (no rounding, ||f|| assumed >= 1, L = 1)."""
    p = torch.nn.functional.normalize
    u = p(f1, dim=1) - p(f0, dim=1)
    margin = (p(a, dim=1) * u).sum(1).abs()
    return torch.where(u.norm(dim=1) > 0, margin / u.norm(dim=1).clamp_min(1e-300), torch.zeros_like(margin))


def chord(rho: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The largest ||a / ||a|| - b / ||b|||| over ||b - a|| <= rho, ||a|| = norm: the angle between a and b is at most
    arcsin(rho / ||a||), whose chord is 2 sin(angle / 2) (about rho / ||a||; 2 rho / ||a|| is the cruder bound);
    2 (antipodes) once rho >= ||a||."""
    t = rho / norm.clamp_min(1e-300)
    return torch.where(t < 1, 2 * torch.sin(torch.arcsin(t.clamp(max=1.0)) / 2), torch.full_like(t, 2.0))


def _ref_radius(est, err, deployed, lipschitz: float, c: float) -> torch.Tensor:
    a, f0, f1 = est
    norms = [e.norm(dim=1) for e in est]
    rho = [err[i] + deployed[i].delta for i in range(3)]  # the balls around each estimate at r = 0
    ok_norm = (rho[1] < norms[1]) & (rho[2] < norms[2])
    u = f1 / norms[2].clamp_min(1e-300)[:, None] - f0 / norms[1].clamp_min(1e-300)[:, None]
    u_norm, margin = u.norm(dim=1), (a * u).sum(1).abs()
    e_u = chord(rho[1], norms[1]) + chord(rho[2], norms[2])
    rho_max = (margin - norms[0] * (e_u + c)) / (u_norm + e_u + c).clamp_min(1e-300)
    dep = deployed[0]
    grow = (1 + dep.sensitivity) / (1 - dep.sensitivity) if dep.sensitivity < 1 else math.inf
    r = (rho_max - err[0] - dep.delta * grow) / (lipschitz + dep.kappa)
    good = ok_norm & (r > 0) & (u_norm > e_u)
    return torch.where(good, r, torch.zeros_like(r))


def _angle_test(est, err, deployed, moving, lipschitz: float, c: float):
    """(holds, norms): holds(r) says, per triplet, whether the decision holds with the moving images within r
    (module docstring, the angle bound)."""
    norms = [e.norm(dim=1).clamp_min(1e-300) for e in est]
    phi = [e / n[:, None] for e, n in zip(est, norms, strict=True)]
    alpha0, alpha1 = _angle(phi[0], phi[1]), _angle(phi[0], phi[2])
    win_is_1 = alpha1 < alpha0
    a_win, a_lose = torch.where(win_is_1, alpha1, alpha0), torch.where(win_is_1, alpha0, alpha1)

    def holds(r: torch.Tensor) -> torch.Tensor:
        theta = []
        for i in range(3):
            rho = err[i] + (deployed[i].at(r) + lipschitz * r if moving[i] else deployed[i].delta)
            theta.append(torch.where(rho < norms[i], torch.arcsin((rho / norms[i]).clamp(max=1.0)), math.pi))
        t_win = torch.where(win_is_1, theta[2], theta[1])
        t_lose = torch.where(win_is_1, theta[1], theta[2])
        hi = (a_win + theta[0] + t_win + 2 * ANGLE_EPS).clamp(max=math.pi)
        lo = (a_lose - theta[0] - t_lose - 2 * ANGLE_EPS).clamp(min=0.0)
        return (torch.cos(hi) - torch.cos(lo) > c) & (alpha0 != alpha1)

    return holds, norms


def _angle_radius(est, err, deployed, moving, lipschitz: float, c: float, steps: int = 60) -> torch.Tensor:
    holds, norms = _angle_test(est, err, deployed, moving, lipschitz, c)
    zero = torch.zeros_like(norms[0])
    ok0 = holds(zero)
    # beyond the smallest moving image's norm / L its ball holds 0: no angle is bounded there
    top = torch.stack([norms[i] for i in range(3) if moving[i]]).amin(0) / lipschitz
    lo, hi = zero.clone(), top.clone()
    for _ in range(steps):
        mid = (lo + hi) / 2
        good = holds(mid)
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    return torch.where(ok0, lo, zero)


def decided(est: Sequence[torch.Tensor], err: Sequence[torch.Tensor], slack: float) -> torch.Tensor:
    """(B,) bool: every embedding within ``err`` of the estimates (ref, x0, x1; (B, D) each) makes the decision the
    estimates make, and no computed distance of them (cosine rounding ``slack``) ties it: the angle bound or the
    reference bound of the module docstring at r = 0, with nothing deployed on top."""
    est = [e.double() for e in est]
    zero = Rounding(torch.zeros_like(est[0][:, 0]), 0.0, 0.0, 0.0)
    holds, _ = _angle_test(est, err, (zero,) * 3, (False,) * 3, 1.0, 2 * slack)
    by_angle = holds(torch.zeros_like(est[0][:, 0]))
    return by_angle | (_ref_radius(est, err, (zero,) * 3, 1.0, 2 * slack) > 0)


def certify_embeddings(
    metric: EmbeddingMetric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], tuple[Rounding, ...], float]:
    """(computed embeddings of ref, x0, x1 in the metric's dtype, their roundings, the cosine slack c) from one
    forward pass of the metric as it runs."""
    n = ref.shape[0]
    e, _, rounding = embed_with_error(metric, torch.cat([ref, x0, x1]))
    return e.split(n), rounding.split(n), cosine_slack(e.shape[1], rounding.unit)


@torch.no_grad()
def lipschitz_batch(
    metric: EmbeddingMetric,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    target: Target,
    mode: Mode,
    lipschitz: float | None = None,
    exact: Callable[[], EmbeddingMetric] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, tuple[str, ...]]:
    """(radius, choice, L, modules bounded by the generic rounding rule) for one batch: the radius certifying the
    decision the metric computes (its dtype's rounding included), from the metric's own forward pass; its choice
    (1 = x1, 0 = x0, 0.5 tie).

    The computed embeddings are the estimates (within their rounding bound). Where exact estimates could certify
    more than ``1 + RADIUS_TOL`` times that radius, the triplet is certified again from float64 estimates of
    ``exact()`` (:func:`~robustsim.certify.rounding.float64_copy`). So every radius is within RADIUS_TOL of the
    most the method proves for that triplet, whatever radii a caller asks about: a property of the metric and the
    triplet."""
    L = lipschitz if lipschitz is not None else input_lipschitz(metric, tuple(ref.shape[-2:]))[0]
    (e_ref, e0, e1), rounds, slack = certify_embeddings(metric, ref, x0, x1)
    choice = two_afc_choice(metric.embedding_distance(e_ref, e0), metric.embedding_distance(e_ref, e1))
    assumed = rounds[0].assumed
    if mode == "lipsim":
        return radius_from_embeddings(e_ref, e0, e1, L, mode, target), choice, L, assumed
    est = [r.delta for r in rounds]
    radius = radius_from_embeddings(e_ref, e0, e1, L, mode, target, est, rounds, slack)
    if exact is not None:
        best = radius_from_embeddings(e_ref, e0, e1, L, mode, target, (0.0, 0.0, 0.0), rounds, slack)
        rows = (best > radius * (1 + RADIUS_TOL)).nonzero()[:, 0]
        if rows.numel():
            twin = exact()
            _, e64, r64 = embed_with_error(twin, torch.cat([ref[rows], x0[rows], x1[rows]]))
            parts, deltas = e64.split(rows.numel()), r64.delta.split(rows.numel())
            sub = [Rounding(r.delta[rows], r.sensitivity, r.kappa, r.unit) for r in rounds]
            refined = radius_from_embeddings(*parts, L, mode, target, deltas, sub, slack)
            radius[rows] = torch.maximum(radius[rows], refined)
    return radius, choice, L, assumed


def certified_radius(
    metric: Metric,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    mode: Mode = "sound",
    target: Target = "ref",
) -> torch.Tensor:
    """(B,) float64 l2 radius, in the caller's pixels, within which the metric's 2AFC choice, as the metric
    computes it in its own dtype, cannot change when ``target`` moves (``all``: each image by at most the radius).
    Triplets whose computed decision is a tie or disagrees with exact arithmetic get 0."""

    network_lipschitz(metric)
    assert isinstance(metric, EmbeddingMetric)
    with evaluating(metric):
        radius, _, _, _ = lipschitz_batch(metric, ref, x0, x1, target, mode, exact=lambda: float64_copy(metric))
    return radius


def embedding_distance_bound(metric: Metric, x: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) upper bound on the distance the metric computes between x and any x + delta, ||delta||_2 <= eps in the
    caller's pixels (its dtype's rounding included), capped at 2 (the largest 1 - cos).

    Both computed embeddings lie within rho of the estimate e of f(x) (rho = est + dep(r) + L r, r = 0 or eps),
    so their angle is at most the two arcsines; d <= 1 - cos(angle) + the cosine slack."""
    L, _ = input_lipschitz(metric, tuple(x.shape[-2:]))
    assert isinstance(metric, EmbeddingMetric)
    with evaluating(metric):
        _, e, rounding = embed_with_error(metric, x)
    norm = e.norm(dim=1)
    slack = cosine_slack(e.shape[1], rounding.unit)

    def theta(rho: torch.Tensor) -> torch.Tensor:
        return torch.where(rho < norm, torch.arcsin((rho / norm.clamp_min(1e-300)).clamp(max=1.0)), math.pi)

    angle = (theta(rounding.at(0.0)) + theta(rounding.at(eps) + L * eps)).clamp(max=math.pi)
    return (1 - torch.cos(angle) + slack).clamp(max=2.0)
