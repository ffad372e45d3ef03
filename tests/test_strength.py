"""The attacks are as strong as the reference: robustsim's APGD-CE against pyautoattack's
APGDAttack called directly on the same 2-logit model (logits (d(x, x1), d(x, x0)), equal iterations, one restart),
on the same triplets, over seeds: robustsim's mean robust count is at most the reference's + 1. A weakening of the
attack (a wrong step size, a broken schedule, a lost restart) fails here. benchmarks/bench_strength.py prints the wide
comparison (more triplets, 20 and 100 steps, per-triplet disagreements, time)."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

import robustsim
from robustsim.attacks import make_attack
from robustsim.attacks.reference import reference_apgd
from robustsim.data import open_triplets
from robustsim.metrics import EmbeddingMetric
from robustsim.threat import ThreatModel

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("strength")]
SEEDS = (0, 1, 2)


def small_cnn() -> EmbeddingMetric:
    """A small random CNN embedding (seeded): an unconstrained network, easy to attack."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
    )  # fmt: skip
    return EmbeddingMetric(net, name="small-cnn").eval().requires_grad_(False)


@pytest.mark.parametrize("norm, eps", [("l2", 0.25), ("linf", 2 / 255)])  # radii where a weak attack falls short
@pytest.mark.parametrize("name", ["small-cnn", "lipsim-nano"])
def test_robustsims_apgd_is_at_least_as_strong_as_the_reference(name, norm, eps):
    metric = small_cnn() if name == "small-cnn" else robustsim.load_metric(name)
    data = open_triplets("mini:test", limit=48, size=metric.input_size or 32)
    threat = ThreatModel(norm, "ref", (eps,))
    ours, theirs = [], []
    for seed in SEEDS:
        res = make_attack("apgd-ce", threat, steps=10, seed=seed)(metric, data, threat, progress=False)
        assert res is not None
        ours.append(int(res.robust[0].sum()))
        theirs.append(int(reference_apgd(metric, data, threat, 10, seed).sum()))
    assert statistics.mean(ours) <= statistics.mean(theirs) + 1, (ours, theirs)
    assert min(theirs) < len(data)  # the reference breaks something: the comparison says something
    # (here a PGD of 10 steps at a fifth of the usual step size leaves 3 to 10 more triplets standing)
