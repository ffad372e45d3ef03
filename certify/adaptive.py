"""Adaptive-precision 2AFC decisions: the exact-arithmetic decision at about the cost of a float32 pass.

Shewchuk's robust predicates (1997) applied to the 2AFC decision of an embedding metric. The float32 forward
gives embeddings e and sound bounds delta on their distance to the exact embeddings f
(:func:`~robustsim.certify.rounding.embed_with_error`). Where the decision the estimates make holds for every
embedding within those bounds (:func:`~robustsim.certify.radius.decided`), it
is the exact decision. The other triplets are recomputed by the metric's float64 twin (the same exact function,
:func:`~robustsim.certify.rounding.float64_copy`, bound ~1e-13): its decision is the exact one wherever float64
resolves it, and the float64 deployment's elsewhere. The distances returned are float64: comparing them gives the
decision.

**Its certificate is the float64 deployment's.** Where the float64 deployment's certificate holds over a ball
(:mod:`robustsim.certify.radius`, deployed rounding of the twin), every embedding within that rounding of the
exact one, the exact one included, keeps the decision: so the exact decision is constant on the ball, the float32
path (which only ever answers the exact decision) and the float64 path both answer it. An attacker who aims at the
boundary forces fallbacks: time, never correctness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from robustsim.certify.radius import RADIUS_TOL, _angle_radius, chord, decided, radius_from_embeddings
from robustsim.certify.rounding import U64, Rounding, cosine_slack, embed_with_error, is_adaptive, twin
from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.scoring import two_afc_choice
from robustsim.threat import Target


class Tally:
    """How many decisions a metric took adaptively and how many fell back to float64, per phase ("clean": 2AFC
    scoring, certificates and clean decisions; "attack": the re-check of attacked points; "retrieval": rankings)."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, phase: str, decisions: int, fallbacks: int) -> None:
        c = self.counts.setdefault(phase, [0, 0])
        c[0], c[1] = c[0] + decisions, c[1] + fallbacks

    def rate(self, phase: str) -> float:
        decisions, fallbacks = self.counts.get(phase, (0, 0))
        return fallbacks / decisions if decisions else 0.0

    def to_json(self) -> dict:
        return {p: {"decisions": d, "fallbacks": f, "fallback_rate": f / d if d else 0.0} for p, (d, f) in
                sorted(self.counts.items())}  # fmt: skip


def tally(metric: Metric) -> Tally:
    """The running count of the metric's adaptive decisions (kept on the metric)."""
    return metric.__dict__.setdefault("_adaptive_tally", Tally())


PHASES = {"clean": "of the clean decisions", "attack": "of the attacked points", "retrieval": "of the rankings"}


def describe(decisions: dict) -> str:
    """The one line reports print for a :func:`decisions` record: "" unless adaptive, else
    "decisions: adaptive (float32; the exact float64 decision where float32 is unsure: fallback on 8.2 % of the
    clean decisions, ...)"."""
    if decisions.get("procedure") != "adaptive":
        return ""
    seen = [f"{100 * decisions[p]['fallback_rate']:.1f} % {words}" for p, words in PHASES.items() if p in decisions]
    fallback = f": fallback on {', '.join(seen)}" if seen else ""
    return f"decisions: adaptive (float32; the exact float64 decision where float32 is unsure{fallback})"


def decisions(metric: Metric) -> dict:
    """How the metric takes its 2AFC decisions, for reports: {"procedure": "adaptive", with its fallback counts
    per phase} or {"procedure": its dtype ("float32", "float64", ...)}."""
    if not is_adaptive(metric):
        return {"procedure": str(metric.dtype).removeprefix("torch.")}
    return {"procedure": "adaptive", **tally(metric).to_json()}


def _float32_pass(metric: EmbeddingMetric, ref, x0, x1):
    """(float32 estimates, their bounds, which triplets they decide exactly) from one float32 pass."""
    n = ref.shape[0]
    _, e, rounding = embed_with_error(metric, torch.cat([ref, x0, x1]), componentwise=False)
    est, bounds = e.split(n), rounding.split(n)
    return est, bounds, decided(est, [b.delta for b in bounds], cosine_slack(e.shape[1], U64))


@torch.no_grad()
def adaptive_distances(
    metric: EmbeddingMetric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, phase: str = "clean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(ref, x0), d(ref, x1)) in float64 for validated [0, 1] batches, whose comparison is the adaptive decision
    (module docstring): from the float32 embeddings where their rounding bound resolves the exact decision, from
    the float64 twin's elsewhere."""
    est, _, done = _float32_pass(metric, ref, x0, x1)
    open_rows = (~done).nonzero()[:, 0]
    est = [t.double() for t in est]
    if open_rows.numel():
        rows = open_rows.to(ref.device)
        e64 = twin(metric)._embed(torch.cat([ref[rows], x0[rows], x1[rows]]).double()).split(rows.numel())
        for mine, theirs in zip(est, e64, strict=True):
            mine[open_rows] = theirs
    tally(metric).add(phase, ref.shape[0], int(open_rows.numel()))
    return metric.embedding_distance(est[0], est[1]), metric.embedding_distance(est[0], est[2])


def _turn(rho: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The largest angle between a vector of norm ``norm`` and any vector within ``rho`` of it (pi past it)."""
    return torch.where(rho < norm, torch.arcsin((rho / norm).clamp(max=1.0)), math.pi)


def _upper_radius(est, near: list[torch.Tensor], lipschitz: float) -> torch.Tensor:
    """(B,) an upper bound on the reference radius that float64 estimates within ``near`` of the float32 ones
    (ref, x0, x1) can prove: r <= |<e_ref, u>| / (||u|| L) (:func:`~robustsim.certify.radius._ref_radius` without
    its subtracted terms), bounded two ways and the smaller kept:

    - by vectors: |<e_ref', u'>| <= margin + near_ref (||u|| + e_u) + ||e_ref|| e_u and ||u'|| >= ||u|| - e_u, e_u
      the chords of near_0 and near_1;
    - by angles: each estimate turns by at most theta_i = arcsin(near_i / ||e_i||), so the angles alpha_i between
      ref and x_i move by at most theta_ref + theta_i and the angle beta between x0 and x1 by theta_0 + theta_1:
      |<e_ref', u'>| <= (||e_ref|| + near_ref) max |cos alpha_1' - cos alpha_0'| and ||u'|| >= 2 sin(beta' / 2)."""
    a, f0, f1 = (t.double() for t in est)
    norms = [t.norm(dim=1).clamp_min(1e-300) for t in (a, f0, f1)]
    phi = [t / n[:, None] for t, n in zip((a, f0, f1), norms, strict=True)]
    u = phi[2] - phi[1]
    u_norm, margin = u.norm(dim=1), (a * u).sum(1).abs()
    e_u = chord(near[1], norms[1]) + chord(near[2], norms[2])
    top = margin + near[0] * (u_norm + e_u) + norms[0] * e_u
    by_vectors = torch.where(u_norm > e_u, top / ((u_norm - e_u).clamp_min(1e-300) * lipschitz), math.inf)
    theta = [_turn(d, n) for d, n in zip(near, norms, strict=True)]
    angle = lambda p, q: 2 * torch.arcsin(((p - q).norm(dim=1) / 2).clamp(max=1.0))  # noqa: E731
    alpha0, alpha1, beta = angle(phi[0], phi[1]), angle(phi[0], phi[2]), angle(phi[1], phi[2])
    t0, t1 = theta[0] + theta[1], theta[0] + theta[2]
    lo = lambda x, t: (x - t).clamp(min=0.0)  # noqa: E731
    hi = lambda x, t: (x + t).clamp(max=math.pi)  # noqa: E731
    swing = torch.maximum(torch.cos(lo(alpha1, t1)) - torch.cos(hi(alpha0, t0)),
                          torch.cos(lo(alpha0, t0)) - torch.cos(hi(alpha1, t1)))  # fmt: skip
    spread = 2 * torch.sin(lo(beta, theta[1] + theta[2]) / 2)
    by_angles = torch.where(spread > 0, (norms[0] + near[0]) * swing / (spread.clamp_min(1e-300) * lipschitz), math.inf)
    return torch.minimum(by_vectors, by_angles)


@torch.no_grad()
def adaptive_batch(
    metric: EmbeddingMetric,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    target: Target,
    lipschitz: float,
    thresholds: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(radius, choice, modules bounded by the generic rule) of the adaptive deployment for one batch: the
    float64 deployment's certificate (module docstring) and the adaptive decision.

    From the float32 pass every radius is sound: the estimates' error plus the float64 twin's rounding
    (:meth:`~robustsim.certify.rounding.Rounding.in_unit`). The float64 twin certifies again only the triplets
    float32 does not decide and those whose radius it could raise across one of ``thresholds`` (the l2 radii a
    caller asks about; None: by more than RADIUS_TOL), judged by a proven upper bound for the reference (any
    other target: every triplet below the largest threshold). So the certified accuracy at each threshold is the
    float64 deployment's."""
    est, bounds, done = _float32_pass(metric, ref, x0, x1)
    err = [b.delta for b in bounds]
    dep = [b.in_unit(U64) for b in bounds]
    slack = cosine_slack(est[0].shape[1], U64)
    low = radius_from_embeddings(*est, lipschitz, "sound", target, err, dep, slack)
    if target == "ref":
        low = torch.maximum(low, _angle_radius([e.double() for e in est], err, dep, (True, False, False),
                                               lipschitz, 2 * slack))  # fmt: skip
        high = _upper_radius(est, [e + d.delta for e, d in zip(err, dep, strict=True)], lipschitz)
    else:
        high = torch.full_like(low, math.inf)
    if thresholds is None:
        need = high > low * (1 + RADIUS_TOL)
    else:
        need = torch.zeros_like(done)
        for t in thresholds:
            need |= (low <= t) & (high > t)
    need |= ~done
    choice = two_afc_choice(*(metric.embedding_distance(est[0].double(), e.double()) for e in est[1:]))
    rows = need.nonzero()[:, 0]
    if rows.numel():
        at = rows.to(ref.device)
        e64, e, r64 = embed_with_error(twin(metric), torch.cat([ref[at], x0[at], x1[at]]).double())
        parts, r64s = e.split(rows.numel()), r64.split(rows.numel())
        exact = radius_from_embeddings(*parts, lipschitz, "sound", target, [r.delta for r in r64s], r64s,
                                       cosine_slack(e.shape[1], U64))  # fmt: skip
        low[rows] = torch.maximum(low[rows], exact)
        choice[rows] = two_afc_choice(*(metric.embedding_distance(parts[0], p) for p in parts[1:]))
    tally(metric).add("clean", ref.shape[0], int((~done).sum()))
    return low, choice, bounds[0].assumed


@torch.no_grad()
def adaptive_search(
    metric: EmbeddingMetric, q: torch.Tensor, phi: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (float64 similarities <phi(f(q)), psi_j>, indices) of validated queries ``q`` against the
    gallery's stored directions ``phi`` (G, D), best first, never an ``exclude``d item: the exact ranking of the
    top k wherever the float32 query embeddings' rounding bound decides it, the float64 twin's elsewhere.

    With w = chord(delta, ||f||) + 1e-12 (float64's own error), the exact <phi(f), psi_a - psi_b> is within
    w ||psi_a - psi_b|| of the estimate's (||psi|| = 1). Where every gap between consecutive items of the top k
    exceeds that, and the gap between the k-th and the (k+1)-th exceeds 2w (every item below has an estimate at
    most the (k+1)-th's), the order of the top k and its set are the exact ones (the order is transitive)."""
    n = q.shape[0]
    _, f, rounding = embed_with_error(metric, q, componentwise=False)
    psi = phi.double()
    norms = f.norm(dim=1).clamp_min(1e-300)
    s = (f / norms[:, None]) @ psi.T
    if exclude is not None:
        s = s.masked_fill(exclude, -math.inf)
    width = chord(rounding.delta, norms) + 1e-12
    top_s, top_i = s.topk(min(k + 1, s.shape[1]), dim=1)
    gaps = top_s[:, :-1] - top_s[:, 1:]
    apart = (psi[top_i[:, :-1]] - psi[top_i[:, 1:]]).norm(dim=2)  # ||psi_a - psi_b|| of consecutive items
    if top_s.shape[1] > k:  # the boundary: the (k+1)-th stands for every item below it
        apart[:, k - 1] = 2.0
    sure = (gaps > width[:, None] * (apart + 1e-12)).all(1)
    open_rows = (~sure).nonzero()[:, 0]
    if open_rows.numel():
        at = open_rows.to(q.device)
        e64 = twin(metric)._embed(q[at].double())
        s64 = torch.nn.functional.normalize(e64, dim=1) @ psi.T
        if exclude is not None:
            s64 = s64.masked_fill(exclude[at], -math.inf)
        s64, i64 = s64.topk(top_s.shape[1], dim=1)
        top_s[open_rows], top_i[open_rows] = s64, i64
    tally(metric).add("retrieval", n, int(open_rows.numel()))
    return top_s[:, :k], top_i[:, :k]


def adaptive_rounding(metric: EmbeddingMetric, q: torch.Tensor) -> tuple[torch.Tensor, Rounding, torch.Tensor]:
    """(float32 query estimates (B, D) as float64, the float64 twin's deployed rounding bounded from the float32
    pass, the estimates' own error): what a certificate of the adaptive deployment starts from."""
    _, f, rounding = embed_with_error(metric, q)
    return f, rounding.in_unit(U64), rounding.delta
