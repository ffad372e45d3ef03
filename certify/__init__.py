"""Certificates for 1-Lipschitz embedding metrics (l2 threat model): 2AFC radii on the reference image,
embedding-distance bounds, and top-k retrieval radii on the query."""

from robustsim.certify.certify2afc import CertifyResult, certify_2afc
from robustsim.certify.lipschitz import estimate_lipschitz, lipschitz_bound
from robustsim.certify.radius import (
    certified_radius,
    embedding_distance_bound,
    radius_from_embeddings,
    require_lipschitz,
)
from robustsim.certify.retrieval import retrieval_radii, top_k_radii

__all__ = [
    "CertifyResult",
    "certified_radius",
    "certify_2afc",
    "embedding_distance_bound",
    "estimate_lipschitz",
    "lipschitz_bound",
    "radius_from_embeddings",
    "require_lipschitz",
    "retrieval_radii",
    "top_k_radii",
]
