"""Randomized smoothing's certificate lives with its metric wrapper, :mod:`robustsim.metrics.smoothed` (a smoothed
metric is a metric: attacks and audits take it without importing the certificates); this module keeps the old
import path."""

from robustsim.metrics.smoothed import ABSTAIN, SmoothedMetric, clopper_pearson_lower, stream_seed

__all__ = ["ABSTAIN", "SmoothedMetric", "clopper_pearson_lower", "stream_seed"]
