"""The metric zoo: every named metric as a row (:mod:`robustsim.zoo.table`), ``load_metric`` /
``list_metrics`` / ``register_metric`` (:mod:`robustsim.zoo.registry`), and the checkpoints that ship inside
the package, one folder per metric (config.json, model.safetensors, card.json)."""

from robustsim.zoo.entry import MetricEntry
from robustsim.zoo.registry import (
    files_of,
    list_metrics,
    load_metric,
    metric_entries,
    metric_entry,
    metrics_using,
    register_checkpoint_loader,
    register_metric,
    shipped_checkpoints,
)

__all__ = [
    "MetricEntry",
    "files_of",
    "list_metrics",
    "load_metric",
    "metric_entries",
    "metric_entry",
    "metrics_using",
    "register_checkpoint_loader",
    "register_metric",
    "shipped_checkpoints",
]
