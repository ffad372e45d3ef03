"""Process groups for ``torchrun`` live in :mod:`robustsim.dist` (training, evaluation and benchmarks share
them); this module keeps the training package's import path."""

from robustsim.dist import DistEnv, all_mean, barrier, init_distributed, shutdown

__all__ = ["DistEnv", "all_mean", "barrier", "init_distributed", "shutdown"]
