"""The certified metrics that ship in the package: each loads offline, is 1-Lipschitz, works as a loss,
and its certified accuracy on mini matches its card (and the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustsim
from robustsim.certify import certify_2afc, estimate_lipschitz
from robustsim.data import open_triplets
from robustsim.zoo import shipped_checkpoints

pytestmark = pytest.mark.xdist_group("shipped")
SHIPPED = ["lipsim-nano", "lipsim-nano-aoc", "lipsim-nano-cert"]
ROOT = Path(__file__).resolve().parents[1]


def card(name: str) -> dict:
    folders = {p.name: p for p in shipped_checkpoints()}
    assert sorted(folders) == SHIPPED, "robustsim/zoo/ holds other checkpoints than the tested ones"
    return json.loads((folders[name] / "card.json").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_offline_and_is_1_lipschitz(name):
    metric = robustsim.load_metric(name)
    bound = card(name)["lipschitz_bound"]  # derived from the weights: 1 up to an orthogonal kernel's ~3e-6
    assert name in robustsim.list_metrics() and 1.0 <= bound <= 1 + 1e-5
    assert metric.lipschitz == pytest.approx(bound, abs=1e-9)
    data = open_triplets("mini:val", size=metric.input_size)
    x = torch.stack([data[i]["ref"] for i in range(4)])
    assert estimate_lipschitz(metric.net, x - 0.5, power_steps=20, ascent_steps=20) <= bound + 1e-4


@pytest.mark.parametrize("name", SHIPPED)
def test_works_as_a_differentiable_loss(name):
    metric = robustsim.load_metric(name)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    y = torch.rand(2, 3, 64, 64)
    loss = metric(x, y).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert float(metric(y, y).abs().max()) < 1e-6


# the card's numbers were computed on another CPU: the second kernel configuration reruns one shipped metric (its
# 600 certificates with the float64 refinement take about a minute there each)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.portable) if n == "lipsim-nano-aoc" else n for n in SHIPPED]
)
def test_certified_accuracy_on_mini_matches_the_card_and_readme(name):
    """The default deployment (adaptive) certifies what the card says, and what the float64 deployment does."""
    metric, card_ = robustsim.load_metric(name), card(name)
    assert metric.decisions == "adaptive"
    eps = [36 / 255, 72 / 255, 108 / 255]
    res = certify_2afc(metric, open_triplets("mini:test"), eps, progress=False)
    assert res.clean_score == pytest.approx(card_["clean"], abs=0.005)
    for e, key in zip(eps, ("36/255", "72/255", "108/255"), strict=True):
        assert res.certified_at(e) == pytest.approx(card_["certified_adaptive"][key], abs=0.005)
        assert card_["certified_adaptive"][key] == pytest.approx(card_["certified_float64"][key], abs=0.01)
    row = next((line for line in (ROOT / "README.md").read_text().splitlines() if f"**{name}**" in line), "")
    assert row, f"README has no card row for {name}"
    for value in (card_["clean"], *card_["certified_adaptive"].values()):
        assert f"{100 * value:.1f}" in row


def test_the_float32_deployment_still_matches_its_card():
    """dtype="float32" keeps the plain float32 deployment and its card numbers (its rounding subtracted)."""
    name = "lipsim-nano-aoc"
    metric, card_ = robustsim.load_metric(name, dtype="float32"), card(name)
    assert metric.decisions == "plain"
    eps = [36 / 255, 72 / 255, 108 / 255]
    res = certify_2afc(metric, open_triplets("mini:test"), eps, progress=False)
    for e, key in zip(eps, ("36/255", "72/255", "108/255"), strict=True):
        assert res.certified_at(e) == pytest.approx(card_["certified"][key], abs=0.005)


FRESH = """
import json, sys, torch, robustsim
metric = robustsim.load_metric(sys.argv[1])
x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
print(json.dumps({"embedding": metric.embed(x).tolist(), "bound": metric.lipschitz}))
"""


@pytest.mark.portable
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_metric_is_one_fixed_function_whatever_ran_before_and_in_a_fresh_process(name):
    """The same input gives the same bits in one process after train()/eval(), with gradients enabled and after a
    certification (the same stored tensors, the same kernels); a fresh process (other threads, maybe other
    kernels) computes the same exact function: both evaluations lie within the rounding bound robustsim proves
    for each (||F1 - F2|| <= delta1 + delta2), and the Lipschitz bound is the card's number, which is >= the
    bound derived here (rounded up: no CPU's last ulp changes it)."""
    import subprocess
    import sys

    from robustsim.certify.rounding import embed_with_error

    metric = robustsim.load_metric(name)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = metric.embed(x).detach()
    bound = metric.lipschitz
    metric.train()
    metric.eval()
    with torch.enable_grad():
        metric.requires_grad_(True)
        assert torch.equal(metric.embed(x).detach(), first)
        metric.requires_grad_(False)
    certify_2afc(metric, open_triplets("mini:test", limit=8), [36 / 255], progress=False)
    assert torch.equal(metric.embed(x), first) and metric.lipschitz == bound
    out = subprocess.run([sys.executable, "-c", FRESH, name], capture_output=True, text=True, check=True)
    fresh = json.loads(out.stdout)
    _, _, rounding = embed_with_error(metric, x)
    gap = (torch.tensor(fresh["embedding"], dtype=torch.float64) - first.double()).norm(dim=1)
    assert (gap <= 2 * rounding.delta).all(), (gap, rounding.delta)
    assert fresh["bound"] == bound == card(name)["lipschitz_bound"]
    metric.net.stated_bound = None
    assert metric.lipschitz <= card(name)["lipschitz_bound"]  # derived here, below the card's rounded-up number
