"""robustsim: audit, certify and train robust perceptual similarity metrics.

>>> import robustsim
>>> metric = robustsim.load_metric("effnet-lite0")
>>> d = metric(x, y)          # x, y: (B, 3, H, W) in [0, 1] -> (B,) distances
"""

from robustsim import data
from robustsim.bench.run import benchmark
from robustsim.certify.smoothing import SmoothedMetric
from robustsim.errors import DataError, InputError, RobustsimError, WeightsError
from robustsim.losses import PerceptualLoss
from robustsim.metrics import EmbeddingMetric, EnsembleMetric, Metric
from robustsim.scoring import two_afc_score
from robustsim.threat import ThreatModel
from robustsim.zoo import list_metrics, load_metric, register_metric

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
    "ThreatModel",
    "WeightsError",
    "benchmark",
    "data",
    "list_metrics",
    "load_metric",
    "register_metric",
    "two_afc_score",
]
