"""robustsim: audit, certify and train robust perceptual similarity metrics.

>>> import robustsim
>>> metric = robustsim.load_metric("effnet-lite0")
>>> d = metric(x, y)          # x, y: (B, 3, H, W) in [0, 1] -> (B,) distances
"""

from typing import TYPE_CHECKING

from robustsim.errors import DataError, InputError, RobustsimError, WeightsError
from robustsim.lazy import lazy_getattr
from robustsim.threat import ThreatModel

# the rest is imported on first use (PEP 562): `robustsim --help` and the package's light parts need no torch
_LAZY = {
    "benchmark": "robustsim.bench.run",
    "SmoothedMetric": "robustsim.metrics.smoothed",
    "PerceptualLoss": "robustsim.losses",
    "EmbeddingMetric": "robustsim.metrics",
    "EnsembleMetric": "robustsim.metrics",
    "Metric": "robustsim.metrics",
    "two_afc_score": "robustsim.scoring",
    "list_metrics": "robustsim.zoo",
    "load_metric": "robustsim.zoo",
    "register_metric": "robustsim.zoo",
}

if TYPE_CHECKING:
    from robustsim import data
    from robustsim.bench.run import benchmark
    from robustsim.losses import PerceptualLoss
    from robustsim.metrics import EmbeddingMetric, EnsembleMetric, Metric
    from robustsim.metrics.smoothed import SmoothedMetric
    from robustsim.scoring import two_afc_score
    from robustsim.zoo import list_metrics, load_metric, register_metric


__getattr__ = lazy_getattr(__name__, _LAZY, submodules=True)

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
