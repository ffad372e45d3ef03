"""robustsim.register_metric, the public way to add a metric: the registered name loads, scores, is attacked and
benchmarked like a zoo row (it used to fail in every reader: its row's fields were filled out of order)."""

from __future__ import annotations

import torch

import robustsim
from robustsim.models import LipSimMetric, LipSimNet, LipSimPreset


def tiny(scale: float = 1.0) -> LipSimMetric:
    torch.manual_seed(0)
    metric = LipSimMetric(LipSimNet(LipSimPreset(2, 8, 1, 64), embed_dim=32, input_size=16))
    metric.name = "tiny-registered"
    return metric


def test_a_registered_metric_loads_is_benchmarked_and_benched(tmp_path):
    robustsim.register_metric("tiny-registered", tiny, "a random 1-Lipschitz net", options={"scale": 2.0},
                              packages=("torch",))  # fmt: skip
    assert "tiny-registered" in robustsim.list_metrics()
    metric = robustsim.load_metric("tiny-registered")
    assert isinstance(metric, LipSimMetric) and not metric.training
    x = torch.rand(2, 3, 16, 16)
    assert metric(x, x.flip(0)).shape == (2,)
    clean, robust = robustsim.benchmark("tiny-registered", "mini", "l2", eps=0.5)
    assert 0.0 <= robust <= clean <= 1.0
    from robustsim.bench.run import run

    cards = run(["tiny-registered"], "mini", tmp_path / "b", limit=8, progress=False, log=lambda *a: None)
    assert cards is not None and "tiny-registered" in cards
    assert (tmp_path / "b" / "leaderboard.md").read_text().count("tiny-registered") >= 1
    from robustsim.audit import run_audit
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel

    report = run_audit(metric, open_triplets("mini:test", limit=4), ThreatModel("l2", "ref", (0.5,)), ["apgd-ce"],
                       steps=2, batch_size=4, progress=False)  # fmt: skip
    assert report.metric == "tiny-registered" and all(r <= report.clean for r in report.robust)
