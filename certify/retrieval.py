"""Certified retrieval for Lipschitz embedding metrics (the sound 2AFC radius, docs/certify.md, per ranked pair),
for the ranking the deployed search computes.

Only the query x moves; the gallery is fixed: its stored unit directions psi_j (float32, what the index searches)
are exact data. The search ranks item a above j when its computed similarity fl(<fl(phi(F(x))), psi>) is larger;
that holds whenever the exact <phi(F(x)), psi_a - psi_j> exceeds 2 eta, eta the rounding of normalising and of
the D-term products (:func:`~robustsim.certify.rounding.cosine_slack`). With F(x') within rho(r) = est + dep(r) + L r
of the estimate f (:mod:`robustsim.certify.radius`), <F, u> >= <f, u> - rho ||u|| and ||F|| <= ||f|| + rho, so the
order holds while rho < (<f, u> - 2 eta ||f||) / (||u|| + 2 eta): R(a, j) is the largest such r. An item a of the
top k stays in the top k within R_k(a) = min over items j outside the top k of R(a, j): it keeps beating all of
them, so at most k - 1 items can rank above it. For k = 1 this is the radius of the top-1 item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from robustsim.certify.adaptive import adaptive_rounding
from robustsim.certify.lipschitz import input_lipschitz
from robustsim.certify.rounding import U64, Rounding, cosine_slack, embed_with_error, is_adaptive
from robustsim.metrics.base import EmbeddingMetric, Metric


def pairwise_radii(
    f: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    lipschitz: float,
    rounding: Rounding | None = None,
    slack: float = 0.0,
    est: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """(B, K, G) radius R(a, j) for every listed item a = top[b, i] against every gallery item j.

    ``f`` (B, D) query embedding estimates, each within ``est`` of the exact one (default: the rounding's delta,
    the computed embeddings being the estimates); ``phi`` (G, D) the gallery's stored directions; ``rounding`` the
    deployed rounding of the queries; ``slack`` eta. Entries with j == a are +inf; a different item with the same
    direction gives 0 (a tie cannot be certified)."""
    f, phi = f.double(), phi.double()
    n = f.shape[0]
    zero = torch.zeros(n, dtype=torch.float64, device=f.device)
    if rounding is None:
        rounding = Rounding(zero, 0.0, 0.0, 0.0)
    e = rounding.delta if est is None else torch.as_tensor(est, dtype=torch.float64, device=f.device).expand(n)
    grow = (1 + rounding.sensitivity) / (1 - rounding.sensitivity) if rounding.sensitivity < 1 else math.inf
    base = (e + rounding.delta * grow)[:, None, None]  # rho at r = 0
    s = f @ phi.T  # (B, G) <f, psi_j>
    s_a = s.gather(1, top)  # (B, K)
    sq = (phi * phi).sum(1)  # ||psi_a - psi_j||^2 = |psi_a|^2 + |psi_j|^2 - 2 <psi_a, psi_j>, widened by 1e-7
    gram = torch.einsum("bkd,gd->bkg", phi[top], phi)
    u_norm = (sq[top][:, :, None] + sq[None, None, :] - 2 * gram).clamp_min(0).sqrt() + 1e-7
    margin = s_a[:, :, None] - s[:, None, :]
    norm_f = f.norm(dim=1)[:, None, None]
    rho_max = (margin - 2 * slack * norm_f) / (u_norm + 2 * slack)
    r = (rho_max - base) / (lipschitz + rounding.kappa)
    r = torch.where(r <= 0, torch.zeros_like(r), r)
    same = top[:, :, None] == torch.arange(phi.shape[0], device=phi.device)[None, None, :]
    return r.masked_fill(same, torch.inf)


def top_k_radii(
    f: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    lipschitz: float,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
    rounding: Rounding | None = None,
    slack: float = 0.0,
    est: torch.Tensor | float | None = None,
) -> dict[int, torch.Tensor]:
    """For each k: (B, k) certified l2 radius of membership in the top k for the items ``top[:, :k]``.

    ``top`` (B, K >= max k) is the clean ranking, best first; ``exclude`` (B, G) marks items never
    ranked (they cannot overtake anything)."""
    r = pairwise_radii(f, phi, top, lipschitz, rounding, slack, est)
    if exclude is not None:
        r = r.masked_fill(exclude[:, None, :], torch.inf)
    out = {}
    for k in ks:
        inside = torch.zeros(r.shape[0], r.shape[2], dtype=torch.bool, device=r.device)
        inside.scatter_(1, top[:, :k], True)
        out[k] = r[:, :k].masked_fill(inside[:, None, :], torch.inf).amin(2)
    return out


def retrieval_radii(
    metric: Metric,
    q: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """:func:`top_k_radii` for query images ``q`` (caller's pixels) of a metric with a Lipschitz certificate against
    the gallery's stored directions ``phi`` (what the search ranks with), for the ranking the search computes."""
    L, _ = input_lipschitz(metric, tuple(q.shape[-2:]))
    assert isinstance(metric, EmbeddingMetric)
    if is_adaptive(metric):  # its ranking: the exact one or the float64 twin's (robustsim.certify.adaptive)
        f, deployed, est = adaptive_rounding(metric, q)
        return top_k_radii(f, phi, top, L, ks, exclude, deployed, cosine_slack(phi.shape[1], U64), est)
    _, f, rounding = embed_with_error(metric, q)
    return top_k_radii(f, phi, top, L, ks, exclude, rounding, cosine_slack(phi.shape[1], rounding.unit))
