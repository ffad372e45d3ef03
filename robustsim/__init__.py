"""robustsim: audit, certify and train robust perceptual similarity metrics.

>>> import robustsim
>>> metric = robustsim.load_metric("effnet-lite0")
>>> d = metric(x, y)          # x, y: (B, 3, H, W) in [0, 1] -> (B,) distances
"""

from robustsim import data
from robustsim.bench.run import benchmark  # noqa: E402
from robustsim.certify.smoothing import SmoothedMetric  # noqa: E402  (after the metrics it smooths)
from robustsim.errors import DataError, InputError, RobustsimError, WeightsError
from robustsim.losses import PerceptualLoss
from robustsim.metrics import (
    EmbeddingMetric,
    EnsembleMetric,
    Metric,
    list_metrics,
    load_metric,
    register_metric,
)
from robustsim.scoring import two_afc_score

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "EmbeddingMetric",
    "EnsembleMetric",
    "InputError",
    "Metric",
    "PerceptualLoss",
    "RobustsimError",
    "SmoothedMetric",
    "WeightsError",
    "benchmark",
    "data",
    "list_metrics",
    "load_metric",
    "register_metric",
    "two_afc_score",
]
