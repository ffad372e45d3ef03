"""The metric zoo: every named metric as a row (:mod:`robustsim.zoo.rows`), ``load_metric`` /
``list_metrics`` / ``register_metric`` (:mod:`robustsim.zoo.registry`), and the checkpoints that ship inside
the package, one folder per metric (config.json, model.safetensors, card.json).

Imported on first use (PEP 562): the rows and :mod:`robustsim.zoo.names` load without torch, so the CLI checks
a metric's name before paying for it."""

from typing import TYPE_CHECKING

from robustsim.lazy import lazy_getattr

_LAZY = {
    "MetricEntry": "robustsim.zoo.entry",
    **{
        name: "robustsim.zoo.registry"
        for name in (
            "files_of",
            "list_metrics",
            "load_metric",
            "metric_entries",
            "metric_entry",
            "metrics_using",
            "register_checkpoint_loader",
            "register_metric",
        )
    },
    "shipped_checkpoints": "robustsim.zoo.names",
}

if TYPE_CHECKING:
    from robustsim.zoo.entry import MetricEntry
    from robustsim.zoo.names import shipped_checkpoints
    from robustsim.zoo.registry import (
        files_of,
        list_metrics,
        load_metric,
        metric_entries,
        metric_entry,
        metrics_using,
        register_checkpoint_loader,
        register_metric,
    )

__getattr__ = lazy_getattr(__name__, _LAZY)

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
