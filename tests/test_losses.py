"""Perceptual losses: gradients flow, zero on identical images, weighted sums equal their parts."""

from __future__ import annotations

import pytest
import torch

import robustsim
from robustsim.errors import RobustsimError
from robustsim.losses import PerceptualLoss, parse_terms


def test_parse_terms_keeps_unweighted_ensembles_whole():
    assert parse_terms("0.8*ms-ssim+0.2*l1") == [(0.8, "ms-ssim"), (0.2, "l1")]
    assert parse_terms("dinov2-s14+effnet-lite0") == [(1.0, "dinov2-s14+effnet-lite0")]
    assert parse_terms("0.5*effnet-lite0+effnet-lite1+1e-1*l2") == [(0.5, "effnet-lite0+effnet-lite1"), (0.1, "l2")]
    with pytest.raises(RobustsimError, match="empty term"):
        parse_terms("0.5*l2++l1")


@pytest.mark.parametrize("spec", ["0.8*ms-ssim+0.2*l1", "lipsim-nano", {"effnet-lite0": 1.0, "l2": 0.5}])
def test_gradients_flow_and_identical_images_cost_zero(spec):
    loss = PerceptualLoss(spec)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g).requires_grad_(True)
    y = torch.rand(2, 3, 64, 64, generator=g)
    value = loss(x, y)
    value.backward()
    assert value.dim() == 0 and float(value) > 0
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    assert float(loss(y, y)) == pytest.approx(0.0, abs=1e-5)
    assert all(not p.requires_grad for p in loss.parameters())


def test_weighted_sum_equals_its_parts_and_reductions():
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    loss = PerceptualLoss("0.8*ms-ssim+0.2*l1", reduction="none")
    parts = 0.8 * robustsim.load_metric("ms-ssim")(x, y) + 0.2 * robustsim.load_metric("l1")(x, y)
    torch.testing.assert_close(loss(x, y), parts)
    assert float(PerceptualLoss("0.8*ms-ssim+0.2*l1")(x, y)) == pytest.approx(float(parts.mean()), rel=1e-5)
    assert float(PerceptualLoss("0.8*ms-ssim+0.2*l1", reduction="sum")(x, y)) == pytest.approx(
        float(parts.sum()), rel=1e-5
    )


def test_metrics_stay_frozen_when_the_model_trains():
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "loss": PerceptualLoss("effnet-lite0")})
    model.train()
    assert model["head"].training and not any(m.training for m in model["loss"].metrics.modules())
