"""Certified retrieval for Lipschitz embedding metrics (the sound 2AFC radius, docs/certify.md, per ranked pair).

Only the query x moves; the gallery is fixed. Item a ranks above item j iff <phi(x), phi_a - phi_j> > 0,
i.e. iff <f(x), u> > 0 with u = phi_a - phi_j, and with f L-Lipschitz (w.r.t. the caller's query image,
preprocessing included) that sign cannot change while ||delta||_2 < R(a, j) = <f(x), u> / (L ||u||)
(the 2AFC radius with x as reference, j as x0, a as x1). An item a of the top k therefore stays in the
top k within R_k(a) = min over items j outside the top k of R(a, j): it keeps beating all of them, so at
most k - 1 items can rank above it. For k = 1 this is the radius of the top-1 item.

Rounding: the query embedding comes in float64 with ||f - f_exact|| <= delta and each gallery
direction with ||phi_j - phi_j,exact|| <= e_j (:func:`certified_gallery`); then ||u - u_exact|| <= e_a + e_j
and the margin loses at most delta (||u|| + e_a + e_j) + ||f|| (e_a + e_j), which is subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from robustsim.certify.lipschitz import input_lipschitz
from robustsim.certify.rounding import embed_with_error

from robustsim.data.imageset import ImageSet
from robustsim.metrics.base import EmbeddingMetric, Metric


def pairwise_radii(
    f: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    lipschitz: float,
    delta: torch.Tensor | float = 0.0,
    phi_error: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """(B, K, G) radius R(a, j) for every listed item a = top[b, i] against every gallery item j.

    ``f`` (B, D) raw query embeddings (error <= ``delta`` each), ``phi`` (G, D) unit-norm gallery
    embeddings (error <= ``phi_error`` each). Entries with j == a are +inf; a different item with the
    same embedding gives 0 (a tie cannot be certified)."""
    f, phi = f.double(), phi.double()
    e = torch.as_tensor(phi_error, dtype=torch.float64, device=phi.device).expand(phi.shape[0])
    d = torch.as_tensor(delta, dtype=torch.float64, device=f.device).expand(f.shape[0])
    s = f @ phi.T  # (B, G) <f, phi_j>
    s_a = s.gather(1, top)  # (B, K)
    gram = torch.einsum("bkd,gd->bkg", phi[top], phi)  # <phi_a, phi_j>
    u_norm = (2 - 2 * gram).clamp_min(0).sqrt()
    e_u = e[top][:, :, None] + e[None, None, :]
    margin = s_a[:, :, None] - s[:, None, :]
    low = margin - d[:, None, None] * (u_norm + e_u) - f.norm(dim=1)[:, None, None] * e_u
    r = low / (lipschitz * (u_norm + e_u).clamp_min(1e-300))
    r = torch.where((u_norm <= 1e-6) | (u_norm <= e_u) | (low <= 0), torch.zeros_like(r), r)
    same = top[:, :, None] == torch.arange(phi.shape[0], device=phi.device)[None, None, :]
    return r.masked_fill(same, torch.inf)


def top_k_radii(
    f: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    lipschitz: float,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
    delta: torch.Tensor | float = 0.0,
    phi_error: torch.Tensor | float = 0.0,
) -> dict[int, torch.Tensor]:
    """For each k: (B, k) certified l2 radius of membership in the top k for the items ``top[:, :k]``.

    ``top`` (B, K >= max k) is the clean ranking, best first; ``exclude`` (B, G) marks items never
    ranked (they cannot overtake anything)."""
    r = pairwise_radii(f, phi, top, lipschitz, delta, phi_error)
    if exclude is not None:
        r = r.masked_fill(exclude[:, None, :], torch.inf)
    out = {}
    for k in ks:
        inside = torch.zeros(r.shape[0], r.shape[2], dtype=torch.bool, device=r.device)
        inside.scatter_(1, top[:, :k], True)
        out[k] = r[:, :k].masked_fill(inside[:, None, :], torch.inf).amin(2)
    return out


@torch.no_grad()
def certified_gallery(
    metric: EmbeddingMetric, images: ImageSet, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi (G, D) float64 unit gallery embeddings, e (G,) bounds on their distance to the exact ones:
    ||e/||e|| - g/||g|||| <= 2 ||e - g|| / ||e||)."""
    phis, errs = [], []
    device = metric.device
    for start in range(0, len(images), batch_size):
        x = torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]).to(device)
        e, delta = embed_with_error(metric, x)
        n = e.norm(dim=1)
        phis.append(F.normalize(e, dim=1))
        errs.append(torch.where(delta < n, 2 * delta / n.clamp_min(1e-300), torch.full_like(n, 2.0)))
    return torch.cat(phis), torch.cat(errs)


def retrieval_radii(
    metric: Metric,
    q: torch.Tensor,
    phi: torch.Tensor,
    top: torch.Tensor,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
    phi_error: torch.Tensor | float = 0.0,
) -> dict[int, torch.Tensor]:
    """:func:`top_k_radii` for query images ``q`` (caller's pixels) of a metric with a Lipschitz guarantee;
    ``phi`` / ``phi_error`` from :func:`certified_gallery`."""
    L, _ = input_lipschitz(metric, tuple(q.shape[-2:]))
    assert isinstance(metric, EmbeddingMetric)
    f, delta = embed_with_error(metric, q)
    return top_k_radii(f, phi, top, L, ks, exclude, delta, phi_error)
