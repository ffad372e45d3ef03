"""The Metric protocol and the metric implementations (the zoo that names them is :mod:`robustsim.zoo`)."""

from robustsim.metrics.base import EmbeddingMetric, Metric, validate_images
from robustsim.metrics.ensemble import EnsembleMetric
from robustsim.metrics.preprocess import Resize

__all__ = ["EmbeddingMetric", "EnsembleMetric", "Metric", "Resize", "validate_images"]
