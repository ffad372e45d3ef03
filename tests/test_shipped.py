"""The certified metric that ships in the package: loads offline, is 1-Lipschitz, works as a loss,
and its certified accuracy on mini matches its card (and the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from robustsim.certify import certify_2afc, estimate_lipschitz

import robustsim
from robustsim.data import open_triplets
from robustsim.metrics.registry import shipped_checkpoints

pytestmark = pytest.mark.xdist_group("shipped")
NAME = "lipsim-nano"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card() -> dict:
    folders = {p.name: p for p in shipped_checkpoints()}
    assert NAME in folders, "the shipped checkpoint is missing from robustsim/zoo/"
    return json.loads((folders[NAME] / "card.json").read_text())


def test_loads_offline_and_is_1_lipschitz():
    metric = robustsim.load_metric(NAME)
    assert NAME in robustsim.list_metrics() and metric.lipschitz == 1.0
    data = open_triplets("mini:val", size=metric.input_size)
    x = torch.stack([data[i]["ref"] for i in range(4)])
    assert estimate_lipschitz(metric.net, x - 0.5, power_steps=20, ascent_steps=20) <= 1 + 1e-4


def test_works_as_a_differentiable_loss():
    metric = robustsim.load_metric(NAME)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    y = torch.rand(2, 3, 64, 64)
    loss = metric(x, y).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert float(metric(y, y).abs().max()) < 1e-6


def test_certified_accuracy_on_mini_matches_the_card_and_readme(card):
    metric = robustsim.load_metric(NAME)
    eps = [36 / 255, 72 / 255, 108 / 255]
    res = certify_2afc(metric, open_triplets("mini:test", size=metric.input_size), eps, progress=False)
    assert res.clean_score == pytest.approx(card["clean"], abs=0.005)
    for e, key in zip(eps, ("36/255", "72/255", "108/255"), strict=True):
        assert res.certified_at(e) == pytest.approx(card["certified"][key], abs=0.005)
    readme = (ROOT / "README.md").read_text()
    for value in (card["clean"], *card["certified"].values()):
        assert f"{100 * value:.1f}" in readme
