"""Certificates (l2): proofs for Lipschitz embedding metrics (2AFC radii for every threat model,
embedding-distance bounds, top-k retrieval radii), all in the caller's pixels with the preprocessing
and float rounding accounted for; and randomized smoothing for any metric (a certificate of the
smoothed decision) and center smoothing for any metric (a bound on how far its smoothed output moves)."""

from robustsim.certify.center import CenterResult, CenterSmoothing, certify_center
from robustsim.certify.certify2afc import CertifyResult, certify_2afc, certify_smoothed
from robustsim.certify.lipschitz import (
    estimate_lipschitz,
    has_certificate,
    input_lipschitz,
    lipschitz_bound,
    network_lipschitz,
    preprocess_lipschitz,
)
from robustsim.certify.radius import (
    certified_radius,
    embedding_distance_bound,
    radius_from_embeddings,
)
from robustsim.certify.retrieval import retrieval_radii, top_k_radii
from robustsim.certify.rounding import Rounding, embed_with_error, float64_copy, unit_roundoff
from robustsim.metrics.smoothed import SmoothedMetric

#: the certificate methods ``robustsim certify --method`` offers (``auto`` picks lipschitz where it applies)
METHODS = ("lipschitz", "smoothing", "center-smoothing")

__all__ = [
    "METHODS",
    "CenterResult",
    "CenterSmoothing",
    "CertifyResult",
    "certify_center",
    "SmoothedMetric",
    "certified_radius",
    "certify_2afc",
    "certify_smoothed",
    "Rounding",
    "embed_with_error",
    "float64_copy",
    "unit_roundoff",
    "embedding_distance_bound",
    "estimate_lipschitz",
    "has_certificate",
    "input_lipschitz",
    "lipschitz_bound",
    "network_lipschitz",
    "preprocess_lipschitz",
    "radius_from_embeddings",
    "retrieval_radii",
    "top_k_radii",
]
