"""Certificates for every threat model (ref, x0, x1, all) and for the caller's pixels: the resize's exact
norm, the rounding bound, and which metrics get a certificate at all; each attacked to try to break it."""

from __future__ import annotations

import pytest
import torch
from conftest import linear_metric, per_image_pgd, triplets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import robustsim
from robustsim.certify import certified_radius, certify_2afc, embed_with_error, input_lipschitz
from robustsim.certify.rounding import U32, float64_copy
from robustsim.data import open_triplets
from robustsim.metrics.base import resize
from robustsim.metrics.preprocess import axis_matrix
from robustsim.threat import ThreatModel

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def test_resize_is_the_separable_matrix_product_and_upsampling_grows_norms():
    x = torch.rand(1, 1, 13, 17, dtype=torch.float64)
    a_h, a_w = axis_matrix(13, 29, 29, "bilinear", False), axis_matrix(17, 29, 29, "bilinear", False)
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


def test_rounding_bound_dominates_the_float32_error_of_the_shipped_network():
    """The bound of the float32 forward (the metric as it runs, resized or not) covers its distance to the float64
    evaluation of the same exact function, whose own bound is ~2^-29 times smaller."""
    metric = robustsim.load_metric("lipsim-nano")
    twin = float64_copy(metric)
    for size in (40, 64, 96):
        x = torch.rand(12, 3, size, size, generator=torch.Generator().manual_seed(size))
        _, e32, r32 = embed_with_error(metric, x)
        _, e64, r64 = embed_with_error(twin, x)
        assert r32.unit == U32 and r64.unit == 2.0**-53
        assert torch.all((e32 - e64).norm(dim=1) <= r32.delta + r64.delta)
        assert torch.all(r64.delta < 1e-8) and torch.all(r64.delta < 1e-6 * r32.delta)


def test_ref_only_equals_the_previous_certificate_for_a_float64_metric_and_never_exceeds_it_in_float32():
    """The sound radius |<f, u>| / (L ||u||): a float64 deployment of the metric certifies it (its rounding is
    ~1e-13 of it); the float32 deployment certifies less, never more (its rounding bound is subtracted)."""
    metric = robustsim.load_metric("lipsim-nano", dtype="float32")
    data = open_triplets("mini", limit=64)
    res32 = certify_2afc(metric, data, [36 / 255], progress=False)
    res64 = certify_2afc(float64_copy(metric), data, [36 / 255], progress=False)
    x = {k: torch.stack([data[i][k] for i in range(64)]) for k in ("ref", "x0", "x1")}
    e = metric.embed(torch.cat([x["ref"], x["x0"], x["x1"]])).double()
    a, f0, f1 = e.split(64)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    before = (a * u).sum(1).abs() / u.norm(dim=1) / res64.lipschitz  # the formula on float32 embeddings
    assert torch.allclose(res64.radius, before, rtol=1e-4, atol=1e-6)
    assert torch.all(res32.radius <= res64.radius) and (res32.radius > 0).sum() >= (res64.radius > 0).sum() / 4
    assert res32.details["lipschitz_source"] == "structure" and res32.lipschitz == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("target", ["x0", "x1", "all"])
def test_moving_distorted_images_is_certified_on_the_shipped_metric_and_never_broken(target):
    metric = robustsim.load_metric("lipsim-nano")
    data = open_triplets("mini", limit=24)
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(24)]) for k in ("ref", "x0", "x1"))
    r = certified_radius(metric, ref, x0, x1, target=target)  # the float32 decision the metric computes
    assert (r > 0).float().mean() > 0.5
    assert not per_image_pgd(metric, ref, x0, x1, target, (0.999 * r).float(), steps=30).any()
    twin = float64_copy(metric)  # the same function deployed in float64: its radii, at least as large
    r64 = certified_radius(twin, *(t.double() for t in (ref, x0, x1)), target=target)
    assert torch.all(r <= r64)
    some = slice(0, 12)  # float64 attack steps cost ~8 float32 ones on a CPU
    assert not per_image_pgd(
        twin, *(t[some].double() for t in (ref, x0, x1)), target, 0.999 * r64[some], steps=20
    ).any()
    # the attack is strong enough to matter: the net is far from tight (Lipschitz estimate 0.33), so far out
    assert per_image_pgd(metric, ref, x0, x1, target, (10 * r64 + 0.05).float(), steps=30).float().mean() > 0.5


# randomized smoothing -----------------------------------------------------------------------------


def test_only_metrics_whose_pipeline_the_bound_covers_get_a_certificate_and_none_is_broken():
    """Every built-in metric: a Lipschitz certificate exists only where the embedding is the bounded network behind
    the base resize-and-normalise (an ensemble's own pipeline or a custom preprocessing is refused), and a strong
    attack on mini never beats a certificate that is given (the audit checks certified <= robust)."""
    from robustsim.audit import run_audit
    from robustsim.certify.lipschitz import network_lipschitz
    from robustsim.errors import RobustsimError
    from robustsim.zoo import metric_entries

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
        threat = ThreatModel("l2", "ref", (36 / 255, 0.5))
        report = run_audit(metric, data, threat, ["apgd-ce", "apgd-margin"], steps=30, progress=False)
        assert report.certified[0] > 0  # a certificate that certifies something, and was not beaten
    assert sorted(certified) == ["lipsim-nano", "lipsim-nano-aoc", "lipsim-nano-cert"]
