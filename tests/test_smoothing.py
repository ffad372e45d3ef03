"""Randomized smoothing (robustsim.metrics.smoothed): the smoothed probability and radius against closed forms
on a linear embedding, soundness at the stated rate, the CLI's words."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import linear_metric, run_cli, triplets
from scipy.stats import norm as gaussian
from torch import nn

import robustsim
from robustsim.certify import SmoothedMetric
from robustsim.data import open_triplets


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


@pytest.mark.portable
def test_each_triplet_draws_its_own_noise_so_any_batch_or_shard_gives_the_same_certificate():
    """A triplet's noise depends on the seed and the triplet alone, so certifying a shard (what a
    torchrun rank does) or other batch sizes gives each triplet exactly the certificate of the whole run."""
    from robustsim.certify import certify_smoothed
    from robustsim.dist import local_env

    metric, data = robustsim.load_metric("l2"), open_triplets("mini:test", limit=12)
    full = certify_smoothed(metric, data, [0.1], 0.25, n=64, batch_size=5, progress=False, env=local_env())
    rows = [1, 3, 4, 8, 11]
    shard = certify_smoothed(
        metric, data.select(rows), [0.1], 0.25, n=64, batch_size=2, progress=False, env=local_env()
    )
    # each triplet's noise is evaluated in calls of its own (n copies of its reference): the same shapes, hence the
    # same kernels, whatever the triplet batch, so the counts and radii are equal bit for bit
    assert torch.equal(full.radius[rows], shard.radius) and torch.equal(full.clean[rows], shard.clean)
    again = certify_smoothed(metric, data, [0.1], 0.25, n=64, batch_size=12, seed=1, progress=False, env=local_env())
    assert not torch.equal(full.radius, again.radius)  # another seed, other noise


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric=None), "Metric"),
        (dict(metric="ssim"), "Metric"),
        (dict(n=True), "n must be an integer"),
        (dict(n=2.5), "n must be an integer"),
        (dict(batch=0), "batch must be an integer >= 1"),
        (dict(sigma="0.25"), "sigma must be a finite number"),
        (dict(sigma=float("inf")), "sigma must be a finite number"),
        (dict(sigma=float("nan")), "sigma must be a finite number"),
        (dict(sigma=1e200), r"sigma must be in \(0, 10\]"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=1.0), "alpha"),
    ],
)
def test_absurd_smoothing_settings_are_refused_in_one_line(kwargs, match):
    args = dict(metric=robustsim.load_metric("l2"), sigma=0.25)
    args.update(kwargs)
    with pytest.raises(robustsim.InputError, match=match) as err:
        SmoothedMetric(args.pop("metric"), args.pop("sigma"), **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("option", [["--sigma", "nan"], ["--sigma", "inf"], ["--sigma", "1e200"], ["--alpha", "nan"]])
def test_the_cli_refuses_non_finite_smoothing_values(option, capsys):
    code = run_cli(["certify", "--metric", "l2", "--method", "smoothing", "--limit", "2", *option])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and option[0] in err
