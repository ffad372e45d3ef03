"""robustsim: audit, certify and train robust perceptual similarity metrics.

>>> import robustsim
>>> metric = robustsim.load_metric("effnet-lite0")
>>> d = metric(x, y)          # x, y: (B, 3, H, W) in [0, 1] -> (B,) distances
"""

from robustsim.memory import tune_malloc

tune_malloc()  # before the large allocations: see robustsim/memory.py

from robustsim import data  # noqa: E402
from robustsim.bench.run import benchmark  # noqa: E402
from robustsim.certify.smoothing import SmoothedMetric  # noqa: E402
from robustsim.errors import DataError, InputError, RobustsimError, WeightsError  # noqa: E402
from robustsim.losses import PerceptualLoss  # noqa: E402
from robustsim.metrics import EmbeddingMetric, EnsembleMetric, Metric  # noqa: E402
from robustsim.scoring import two_afc_score  # noqa: E402
from robustsim.threat import ThreatModel  # noqa: E402
from robustsim.zoo import list_metrics, load_metric, register_metric  # noqa: E402

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
