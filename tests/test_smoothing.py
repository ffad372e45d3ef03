"""Randomized smoothing (robustsim.certify.smoothing): the smoothed probability and radius against closed forms
on a linear embedding, soundness at the stated rate, the CLI's words."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import linear_metric, run_cli, triplets
from robustsim.certify import SmoothedMetric
from scipy.stats import norm as gaussian
from torch import nn


def test_smoothed_probability_matches_the_closed_form():
    metric, ref, x0, x1, m, w = smoothing_case(1)
    sigma = 0.05
    smooth = SmoothedMetric(metric, sigma, n=20_000, seed=0)
    p = float(smooth.probability(ref, x0, x1))
    assert p == pytest.approx(gaussian.cdf(m / (sigma * w)), abs=0.015)


def test_smoothing_radius_exceeds_the_exact_one_at_most_at_rate_alpha():
    """>= 200 independent certifications: the radius beats sigma Phi^-1(p_A) (the exact radius of the
    smoothed decision) in at most an alpha share of runs (plus binomial noise), and sits within the
    Clopper-Pearson slack of it otherwise."""
    metric, ref, x0, x1, m, w = smoothing_case(2)
    sigma, n, alpha, runs = 0.05, 400, 0.05, 240
    p_top = gaussian.cdf(abs(m) / (sigma * w))
    exact = sigma * gaussian.ppf(p_top)
    failures, ratios = 0, []
    for seed in range(runs):
        decision, radius = SmoothedMetric(metric, sigma, n=n, alpha=alpha, seed=seed).certify(ref, x0, x1)
        assert int(decision) == int(m > 0) or int(decision) == -1
        failures += int(float(radius) > exact)
        ratios.append(float(radius) / exact)
    assert failures <= alpha * runs + 3 * math.sqrt(runs * alpha * (1 - alpha))
    worst_low = gaussian.ppf(0.5 + 0.5 * (p_top - 0.5)) * sigma / exact  # a loose floor for the slack
    assert sorted(ratios)[runs // 2] > worst_low and sorted(ratios)[runs // 2] <= 1.0


def test_points_inside_the_smoothing_radius_keep_the_smoothed_decision():
    metric, ref, x0, x1, m, w = smoothing_case(3)
    sigma = 0.05
    smooth = SmoothedMetric(metric, sigma, n=2000, alpha=0.001, seed=0)
    decision, radius = smooth.certify(ref, x0, x1)
    assert float(radius) > 0
    # the worst direction: straight at the decision boundary, 90 % of the radius
    flat = ref.flatten(1).clone().requires_grad_(True)
    e = metric.embed(flat.view_as(ref))
    e_fixed = metric.embed(torch.cat([x0, x1]))
    u = nn.functional.normalize(e_fixed[1:], dim=1) - nn.functional.normalize(e_fixed[:1], dim=1)
    (g,) = torch.autograd.grad((e * u).sum(), flat)
    step = -math.copysign(1.0, m) * g / g.norm()
    moved = (flat + 0.9 * float(radius) * step).detach().view_as(ref)
    check = SmoothedMetric(metric, sigma, n=20_000, alpha=0.001, seed=1)
    assert int(check.predict(moved, x0, x1)) == int(decision)


def test_smoothing_cli_says_it_certifies_the_smoothed_metric(tmp_path, capsys):

    out = tmp_path / "s.json"
    argv = ["certify", "--metric", "l2", "--data", "mini", "--limit", "6", "--n", "64", "--sigma", "0.05"]
    assert run_cli([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "method=smoothing" in text and "SMOOTHED" in text and "abstained on" in text
    import json

    report = json.loads(out.read_text())
    assert report["method"] == "smoothing" and report["smoothing"]["sigma"] == 0.05 and "abstain_rate" in report
    assert run_cli([*argv, "--target", "x0"]) == 2


def smoothing_case(seed: int):
    """A linear embedding (isometry) at 4 px and one triplet whose noisy decision is Phi(m / (sigma ||w||))."""
    metric = linear_metric(seed, 4, 48, 1.0, 1.0, isometric=True)
    ref, x0, x1 = triplets(seed, 1, 4, spread=0.6)
    e = metric.embed(torch.cat([ref, x0, x1]))
    a, f0, f1 = e.split(1)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    m = float((a * u).sum())
    w_norm = float(u.norm())  # A is an isometry: ||A^T u|| = ||u||
    return metric, ref, x0, x1, m, w_norm
