"""Issue 14: certificates sound wherever the API accepts an input (resize, normalisation, rounding), for
every threat model, and randomized smoothing checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustsim.attacks.twoafc import TwoAFCClassifier, margin
from robustsim.certify import SmoothedMetric, certified_radius, certify_2afc, embed_with_error, input_lipschitz
from robustsim.certify.lipschitz import interpolation_matrix
from robustsim.certify.rounding import U32
from scipy.stats import norm as gaussian
from torch import nn

import robustsim
from robustsim.data import open_triplets
from robustsim.metrics import EmbeddingMetric
from robustsim.metrics.base import resize

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


class Linear(nn.Module):
    """f(z) = W z (flattened), no structural bound: its constant is declared on the metric."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.w.T


def linear_metric(seed: int, input_size: int, dim: int, scale: float, std: float, isometric: bool) -> EmbeddingMetric:
    """W = scale x (an orthogonal matrix when ``isometric``, else a random one scaled to spectral norm
    ``scale``); declared Lipschitz constant ``scale`` (tight)."""
    g = torch.Generator().manual_seed(seed)
    n_in = 3 * input_size * input_size
    w = torch.randn(dim, n_in, generator=g, dtype=torch.float64)
    if isometric:
        q, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g, dtype=torch.float64))
        w = q[:dim]
    w = scale * w / torch.linalg.matrix_norm(w, ord=2)
    std_t = torch.full((3,), std, dtype=torch.float64)
    return EmbeddingMetric(Linear(w), input_size=input_size, mean=0.5, std=std_t, lipschitz=scale).double().eval()


def triplets(seed: int, n: int, size: int, spread: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    ref = 0.5 + 0.1 * (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) - 0.5)
    noise = lambda: ref + spread * (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) - 0.5)  # noqa: E731
    return ref, noise().clamp(0, 1), noise().clamp(0, 1)


def per_image_pgd(metric, ref, x0, x1, target: str, radius: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """A strong l2 attack on the metric's own clean decision with *each* moving image in its own ball of
    ``radius`` (the threat the certificate covers); returns (B,) bool flipped."""
    clf = TwoAFCClassifier(metric, ref, x0, x1, "all")
    clean = torch.cat([ref, x0, x1], dim=1)
    with torch.no_grad():
        logits = clf(clean)
    y = (logits[:, 1] > logits[:, 0]).long()
    moving = {"ref": [0], "x0": [1], "x1": [2], "all": [0, 1, 2]}[target]
    r = radius.view(-1, 1, 1, 1)
    delta = torch.zeros_like(clean)
    flipped = torch.zeros(ref.shape[0], dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = -margin(clf(clean + delta), y)
        flipped |= (loss.detach() >= 0).cpu()
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            new = delta.clone()
            for i in moving:
                part = slice(3 * i, 3 * i + 3)
                g_i = grad[:, part]
                step = g_i / g_i.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
                d = delta[:, part] + 2.5 * r / steps * step
                d = d * (r / d.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)).clamp(max=1.0)
                new[:, part] = d
            delta = new
    with torch.no_grad():
        flipped |= (margin(clf(clean + delta), y) <= 0).cpu()
    return flipped


def test_resize_is_the_separable_matrix_product_and_upsampling_grows_norms():
    x = torch.rand(1, 1, 13, 17, dtype=torch.float64)
    a_h, a_w = interpolation_matrix(13, 29), interpolation_matrix(17, 29)
    assert torch.allclose(resize(x, 29)[0, 0], a_h @ x[0, 0] @ a_w.T, atol=1e-12)
    metric = linear_metric(0, 16, 8, 1.0, 1.0, isometric=False)
    assert input_lipschitz(metric, (16, 16))[0] == pytest.approx(1.0)
    assert input_lipschitz(metric, (4, 4))[0] == pytest.approx(4.0)  # x4 upsampling: norm 2 per axis
    assert input_lipschitz(metric, (64, 64))[0] < 1.0  # downsampling: larger, still sound radii
    smooth = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)  # a constant image grows by exactly 4x
    assert resize(smooth, 16).norm() / smooth.norm() == pytest.approx(4.0)


@PROPERTY
@given(
    seed=st.integers(0, 10_000),
    caller=st.sampled_from([4, 8, 12]),
    scale=st.floats(0.5, 3.0),
    std=st.floats(0.2, 1.0),
    target=st.sampled_from(["ref", "x0", "x1", "all"]),
)
def test_no_attack_flips_a_decision_strictly_inside_the_certified_radius(seed, caller, scale, std, target):
    """Random declared-L linear embeddings at input size 8, caller images of 4, 8 or 12 px, random std."""
    metric = linear_metric(seed, 8, 16, scale, std, isometric=False)
    ref, x0, x1 = triplets(seed, 24, caller)
    r = certified_radius(metric, ref, x0, x1, target=target)
    assert torch.all(r >= 0) and (r > 0).any()
    assert not per_image_pgd(metric, ref, x0, x1, target, 0.999 * r).any()


@PROPERTY
@given(
    seed=st.integers(0, 10_000), caller=st.sampled_from([4, 8, 12]), scale=st.floats(0.5, 3.0), std=st.floats(0.2, 1.0)
)
def test_the_reference_radius_never_exceeds_the_exact_minimal_perturbation(seed, caller, scale, std):
    """For a linear embedding the decision is sign(<A x + c, u>): the smallest flipping perturbation is
    exactly |<A x + c, u>| / ||A^T u|| (no box); the certified radius may not exceed it."""
    metric = linear_metric(seed, 8, 16, scale, std, isometric=False)
    ref, x0, x1 = triplets(seed, 16, caller)
    r = certified_radius(metric, ref, x0, x1)
    e = metric.embed(torch.cat([ref, x0, x1]).double())
    a, f0, f1 = e.split(16)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    flat = ref.flatten(1).requires_grad_(True)
    inner = (metric.embed(flat.view_as(ref)) * u).sum()
    (grad,) = torch.autograd.grad(inner, flat)  # rows of A^T u (the map is linear)
    exact = (a * u).sum(1).abs() / grad.norm(dim=1)
    assert torch.all(r <= exact * (1 + 1e-9))


def test_radius_is_tight_for_an_isometric_net_at_its_input_size():
    metric = linear_metric(3, 4, 48, 1.0, 1.0, isometric=True)  # 48 = 3 x 4 x 4: an isometry
    ref, x0, x1 = triplets(3, 200, 4, spread=0.1)
    r = certified_radius(metric, ref, x0, x1)
    e, delta = embed_with_error(metric, torch.cat([ref, x0, x1]))
    a, f0, f1 = e.split(200)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    plain = (a * u).sum(1).abs() / u.norm(dim=1)  # the radius with no rounding slack
    assert torch.all(r <= plain) and torch.all(plain - r <= 1e-9 * (1 + plain))  # tight up to the bound
    assert per_image_pgd(metric, ref, x0, x1, "ref", 1.02 * r, steps=100).float().mean() > 0.95


def test_rounding_bound_dominates_the_float32_error_of_the_shipped_network():
    """The same bound stated for float32's unit roundoff covers the float32 forward's distance to the
    float64 one (the float64 bound is that, scaled down by 2^-29)."""
    metric = robustsim.load_metric("lipsim-nano")
    for size in (40, 64, 96):
        x = torch.rand(12, 3, size, size, generator=torch.Generator().manual_seed(size))
        e64, bound32 = embed_with_error(metric, x, U32)
        err = (metric.embed(x).double() - e64).norm(dim=1)
        assert torch.all(err <= bound32)
    _, bound64 = embed_with_error(metric, x)
    assert torch.all(bound64 < 1e-8)


def test_ref_only_equals_the_previous_certificate_at_the_input_size():
    metric = robustsim.load_metric("lipsim-nano")
    data = open_triplets("mini", limit=64)
    res = certify_2afc(metric, data, [36 / 255], progress=False)
    x = {k: torch.stack([data[i][k] for i in range(64)]) for k in ("ref", "x0", "x1")}
    e = metric.embed(torch.cat([x["ref"], x["x0"], x["x1"]])).double()
    a, f0, f1 = e.split(64)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    before = (a * u).sum(1).abs() / u.norm(dim=1)  # the float32 formula used before
    assert torch.allclose(res.radius, before, rtol=1e-4, atol=1e-6)
    assert res.details["lipschitz_source"] == "structure" and res.lipschitz == 1.0


@pytest.mark.parametrize("target", ["x0", "x1", "all"])
def test_moving_distorted_images_is_certified_on_the_shipped_metric_and_never_broken(target):
    metric = robustsim.load_metric("lipsim-nano")
    data = open_triplets("mini", limit=24)
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(24)]) for k in ("ref", "x0", "x1"))
    r = certified_radius(metric, ref, x0, x1, target=target)
    assert (r > 0).float().mean() > 0.5
    assert not per_image_pgd(metric, ref, x0, x1, target, (0.999 * r).float(), steps=30).any()
    # the attack is strong enough to matter: the net is far from tight (Lipschitz estimate 0.33), so far out
    assert per_image_pgd(metric, ref, x0, x1, target, (10 * r + 0.05).float(), steps=30).float().mean() > 0.5


# randomized smoothing -----------------------------------------------------------------------------


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
    from conftest import run_cli

    out = tmp_path / "s.json"
    argv = ["certify", "--metric", "l2", "--data", "mini", "--limit", "6", "--n", "64", "--sigma", "0.05"]
    assert run_cli([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "method=smoothing" in text and "SMOOTHED" in text and "abstained on" in text
    import json

    report = json.loads(out.read_text())
    assert report["method"] == "smoothing" and report["smoothing"]["sigma"] == 0.05 and "abstain_rate" in report
    assert run_cli([*argv, "--target", "x0"]) == 2


def test_only_metrics_whose_pipeline_the_bound_covers_get_a_certificate_and_none_is_broken():
    """Every built-in metric: a Lipschitz certificate exists only where the embedding is the bounded network behind
    the base resize-and-normalise (an ensemble's own pipeline or a custom preprocessing is refused), and a strong
    attack on mini never beats a certificate that is given (the audit checks certified <= robust)."""
    from robustsim.certify.lipschitz import network_lipschitz

    from robustsim.audit import run_audit
    from robustsim.errors import RobustsimError
    from robustsim.metrics import metric_entries

    names = [e.name for e in metric_entries() if e.state() == "built-in"] + ["lipsim-nano+lipsim-nano-cert"]
    certified = []
    for name in names:
        metric = robustsim.load_metric(name)
        try:
            network_lipschitz(metric)
        except RobustsimError as err:
            assert "no Lipschitz" in str(err) or "not an embedding metric" in str(err)
            continue
        certified.append(name)
        data = open_triplets("mini:test", limit=24)
        report, _ = run_audit(metric, data, "l2", [36 / 255, 0.5], ["apgd-ce", "apgd-margin"], steps=30, progress=False)
        assert report["certified"][0] > 0  # a certificate that certifies something, and was not beaten
    assert sorted(certified) == ["lipsim-nano", "lipsim-nano-aoc", "lipsim-nano-cert"]
