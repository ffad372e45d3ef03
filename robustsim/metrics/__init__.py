"""The Metric protocol and the metric implementations (the zoo that names them is :mod:`robustsim.zoo`).

Imported on first use (PEP 562): :mod:`robustsim.metrics.preprocess`'s declarations load without torch."""

from typing import TYPE_CHECKING

from robustsim.lazy import lazy_getattr

_LAZY = {
    "EmbeddingMetric": "robustsim.metrics.base",
    "Metric": "robustsim.metrics.base",
    "validate_images": "robustsim.metrics.base",
    "EnsembleMetric": "robustsim.metrics.ensemble",
    "Resize": "robustsim.metrics.preprocess",
}

if TYPE_CHECKING:
    from robustsim.metrics.base import EmbeddingMetric, Metric, validate_images
    from robustsim.metrics.ensemble import EnsembleMetric
    from robustsim.metrics.preprocess import Resize

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["EmbeddingMetric", "EnsembleMetric", "Metric", "Resize", "validate_images"]
