"""Certified retrieval for Lipschitz embedding metrics (science.md section 3, sound form).

Only the query x moves; the gallery is fixed. Item a ranks above item j iff <phi(x), phi_a - phi_j> > 0,
i.e. iff <f(x), u> > 0 with u = phi_a - phi_j, and with f L-Lipschitz that sign cannot change while
||delta||_2 < R(a, j) = <f(x), u> / (L ||u||) (the 2AFC radius with x as reference, j as x0, a as x1).
An item a of the top k therefore stays in the top k within R_k(a) = min over items j outside the top
k of R(a, j): it keeps beating all of them, so at most k - 1 items can rank above it. For k = 1 this
is the radius of the top-1 item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from robustsim.certify.radius import require_lipschitz

from robustsim.metrics.base import Metric


def pairwise_radii(f: torch.Tensor, phi: torch.Tensor, top: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """(B, K, G) radius R(a, j) for every listed item a = top[b, i] against every gallery item j.

    ``f`` (B, D) raw query embeddings, ``phi`` (G, D) unit-norm gallery embeddings. Entries with
    j == a are +inf; a different item with the same embedding gives 0 (a tie cannot be certified).
    """
    s = f @ phi.T  # (B, G) <f, phi_j>
    s_a = s.gather(1, top)  # (B, K)
    gram = torch.einsum("bkd,gd->bkg", phi[top], phi)  # <phi_a, phi_j>
    u_norm = (2 - 2 * gram).clamp_min(0).sqrt()
    margin = s_a[:, :, None] - s[:, None, :]
    r = margin / (lipschitz * u_norm.clamp_min(1e-12))
    r = torch.where(u_norm <= 1e-6, torch.zeros_like(r), r)
    same = top[:, :, None] == torch.arange(phi.shape[0], device=phi.device)[None, None, :]
    return r.masked_fill(same, torch.inf)


def top_k_radii(
    f: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    lipschitz: float,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """For each k: (B, k) certified l2 radius of membership in the top k for the items ``top[:, :k]``.

    ``top`` (B, K >= max k) is the clean ranking, best first; ``exclude`` (B, G) marks items never
    ranked (they cannot overtake anything)."""
    r = pairwise_radii(f, phi, top, lipschitz)
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
    """:func:`top_k_radii` for query images ``q`` of a metric with a Lipschitz guarantee."""
    L = require_lipschitz(metric)
    with torch.no_grad():
        f = metric._embed(q)  # type: ignore[operator]
    return top_k_radii(f.float(), phi.float(), top, L, ks, exclude)
