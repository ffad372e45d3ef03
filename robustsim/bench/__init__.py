"""``robustsim bench``: a RobustBench for perceptual metrics (one protocol, cards, a leaderboard).

``robustsim.benchmark(metric, data, threat_model, eps) -> (clean, robust)`` is the one-call API;
``robustsim.bench.run(...)`` is what the CLI runs.
"""

from robustsim.bench.protocol import PROTOCOLS, Protocol, get_protocol
from robustsim.bench.run import benchmark, run

__all__ = ["PROTOCOLS", "Protocol", "benchmark", "get_protocol", "run"]
