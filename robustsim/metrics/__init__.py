"""Metric protocol and zoo."""

from robustsim.metrics.base import EmbeddingMetric, Metric, validate_images
from robustsim.metrics.ensemble import EnsembleMetric
from robustsim.metrics.registry import (
    list_metrics,
    load_metric,
    metric_entries,
    register_checkpoint_loader,
    register_metric,
)

__all__ = [
    "EmbeddingMetric",
    "EnsembleMetric",
    "Metric",
    "list_metrics",
    "load_metric",
    "metric_entries",
    "register_checkpoint_loader",
    "register_metric",
    "validate_images",
]
