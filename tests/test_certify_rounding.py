"""Certificates of the deployed decision (robustsim.certify.rounding, radius): the metric's own float32 arithmetic
is part of the proof. Tiny-margin triplets whose float32 decision is a tie or wrong get radius 0 in every entry
point; no attack on the float32 metric beats a float32 radius; certifying changes nothing in the network."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import per_image_pgd
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustsim
from robustsim.certify import certified_radius, certify_2afc, float64_copy
from robustsim.certify.retrieval import top_k_radii
from robustsim.certify.rounding import U32, cosine_slack, embed_with_error, unit_roundoff
from robustsim.data import open_triplets
from robustsim.data.triplets import ArrayTriplets
from robustsim.metrics import EmbeddingMetric
from robustsim.scoring import two_afc_choice


def linear32(seed: int = 0) -> EmbeddingMetric:
    """A float32 linear embedding (its bound derived from the weight, as deployed)."""
    torch.manual_seed(seed)
    return EmbeddingMetric(nn.Sequential(nn.Flatten(), nn.Linear(48, 16, bias=False)), name="lin32").eval()


def near_ties(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplets whose two distorted images differ by a few float32 ulps: exact margins ~1e-8, below what
    float32 distances resolve, so the computed decision is often a tie or the wrong one."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, 4, 4, generator=g)
    x0 = torch.rand(n, 3, 4, 4, generator=g)
    x1 = (x0 + 1e-7 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    return ref, x0, x1


def _decisions(metric: EmbeddingMetric, ref, x0, x1):
    """(float32 choice as the metric computes it, exact choice from the float64 evaluation of the same function)."""
    e = metric.embed(torch.cat([ref, x0, x1])).split(ref.shape[0])
    mine = two_afc_choice(metric.embedding_distance(e[0], e[1]), metric.embedding_distance(e[0], e[2]))
    twin = float64_copy(metric)
    f = twin.embed(torch.cat([ref, x0, x1]).double()).split(ref.shape[0])
    exact = two_afc_choice(1 - torch.cosine_similarity(f[0], f[1]), 1 - torch.cosine_similarity(f[0], f[2]))
    return mine, exact


@pytest.mark.parametrize("target", ["ref", "x0", "x1", "all"])
def test_a_tie_or_a_wrong_float32_decision_gets_radius_zero(target):
    """Of 120 near-tie triplets (most of them float32 ties), the public certified_radius once
    returned R > 0 for all; now every one whose float32 decision is a tie or differs from the exact one gets 0, in
    certified_radius and in certify_2afc."""
    metric = linear32()
    ref, x0, x1 = near_ties()
    mine, exact = _decisions(metric, ref, x0, x1)
    bad = (mine == 0.5) | (mine != exact)
    assert bad.sum() > 30  # the construction does make float32 ties and wrong decisions
    r = certified_radius(metric, ref, x0, x1, target=target)
    assert torch.all(r[bad] == 0)
    imgs = (torch.stack([ref, x0, x1], dim=1) * 255).round().to(torch.uint8).numpy()  # a dataset of exact ties
    data = ArrayTriplets(imgs, (torch.rand(len(ref)) > 0.5).float().numpy(), "ties")
    res = certify_2afc(metric, data, robustsim.ThreatModel("l2", target, (0.01,)), progress=False)
    batch = [torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1")]
    mine, exact = _decisions(metric, *batch)
    assert torch.all(res.radius[(mine == 0.5) | (mine != exact)] == 0)


def test_retrieval_ties_in_float32_similarity_get_radius_zero():
    """Two gallery items whose stored directions tie within the search's rounding: neither top-1 is certified."""
    metric = linear32()
    g = torch.Generator().manual_seed(1)
    q = torch.rand(4, 3, 4, 4, generator=g)
    _, f, rounding = embed_with_error(metric, q)
    base = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=1)
    twin = torch.nn.functional.normalize(base + 1e-7 * torch.randn(1, 16, generator=g), dim=1)
    phi = torch.cat([base, twin]).float()
    top = (f.float() @ phi.T).argsort(dim=1, descending=True)
    radii = top_k_radii(f, phi, top, 1.0, [1], rounding=rounding, slack=cosine_slack(16, U32))
    assert torch.all(radii[1] == 0)


def test_the_shipped_orthogonal_metric_is_certified_only_past_its_float32_rounding():
    """mini:test triplet 99 of lipsim-nano-aoc: exact margin ~2e-6, once R = 3.46e-4 and a PGD point at 0.999 R
    flipped the float32 decision. Its float32 radius is now below the rounding it cannot resolve, and PGD on the
    float32 metric inside 0.999 R of every certified triplet of the first 40 (and of 99) finds no flip."""
    metric = robustsim.load_metric("lipsim-nano-aoc")
    data = open_triplets("mini:test", limit=100)
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(100)]) for k in ("ref", "x0", "x1"))
    r = certified_radius(metric, ref, x0, x1)
    assert float(r[99]) < 3.46e-4 / 10
    assert (r > 36 / 255).float().mean() > 0.3
    attacked = [i for i in range(40) if r[i] > 0] + [99]  # the certified among the first 40, and triplet 99
    a = torch.tensor(attacked)
    broken = per_image_pgd(metric, ref[a], x0[a], x1[a], "ref", 0.999 * r[a], steps=60)
    assert len(attacked) > 10 and not (broken & (r[a] > 0)).any()


def test_the_unit_roundoff_is_the_one_the_metric_runs_in():
    metric = linear32()
    assert unit_roundoff(metric) == 2.0**-24 and unit_roundoff(float64_copy(metric)) == 2.0**-53
    assert unit_roundoff(linear32().to(torch.bfloat16)) == 2.0**-8
    assert 2 * U32 < cosine_slack(256, U32) < 3 * U32 and math.isfinite(cosine_slack(10**6, U32))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([8, 256, 2560]), st.floats(1e-6, 1.0))
def test_the_computed_cosine_distance_is_within_the_slack_of_the_exact_one(seed, dim, spread):
    """EmbeddingMetric.embedding_distance (float64 sums, one rounding to float32) is within cosine_slack of the
    exact 1 - cos of the float32 embeddings it is given (computed here with 60 digits), near-parallel pairs too."""
    import mpmath

    from robustsim.metrics.base import EmbeddingMetric

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, dim, generator=g)
    b = a + spread * torch.randn(3, dim, generator=g)
    d = EmbeddingMetric.embedding_distance(a, b)
    assert d.dtype == torch.float32
    mpmath.mp.dps = 60
    for i in range(3):
        x, y = [mpmath.mpf(float(v)) for v in a[i].tolist()], [mpmath.mpf(float(v)) for v in b[i].tolist()]
        dot = mpmath.fsum(p * q for p, q in zip(x, y, strict=True))
        exact = 1 - dot / (mpmath.sqrt(mpmath.fsum(p * p for p in x)) * mpmath.sqrt(mpmath.fsum(q * q for q in y)))
        assert abs(float(d[i]) - float(exact)) <= cosine_slack(dim, U32), (float(d[i]), float(exact))


def test_certifying_changes_nothing_in_the_network():
    """Certify neither switches the network's mode nor touches a bit of its state."""
    metric = robustsim.load_metric("lipsim-nano-aoc").train()
    before = {k: v.clone() for k, v in metric.state_dict().items()}
    data = open_triplets("mini:test", limit=16)
    certify_2afc(metric, data, [36 / 255], progress=False)
    ref = torch.stack([data[i]["ref"] for i in range(4)])
    certified_radius(metric, ref, ref.flip(0), ref.roll(1, 0))
    assert metric.training and all(m.training for m in metric.modules())
    after = metric.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "resize, hw",
    [
        ("bilinear", (128, 128)),
        ("bilinear", (32, 45)),
        ("bicubic", (64, 80)),
        ("bicubic-aa", (100, 64)),
        ("bicubic-crop", (64, 96)),
        ("bilinear-aa-crop", (100, 64)),
    ],
)
def test_the_interpolation_weights_read_off_in_float32_are_the_ones_the_resize_applies(resize, hw):
    """The exact function uses the weights the metric's dtype computes (read off an identity): the float32 resize
    of any image equals A_h X A_w^T with them up to gamma_T |A_h| |X| |A_w|^T, the rounding the bound charges."""
    from robustsim.metrics.preprocess import Resize, axis_matrices
    from robustsim.nn.rounding import gamma

    interp = "bicubic" if resize.startswith("bicubic") else "bilinear"
    r = Resize(48 if "aa" in resize else 64, interp, antialias="aa" in resize, crop="crop" in resize)
    x = torch.rand(4, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
    ah, aw = axis_matrices(r, hw, torch.float32)
    taps = int((ah != 0).sum(1).max()) * int((aw != 0).sum(1).max())
    exact = ah @ x.double() @ aw.T
    bound = gamma(taps, U32) * (ah.abs() @ x.double().abs() @ aw.abs().T)
    assert torch.all((r(x).double() - exact).abs() <= bound)


def test_a_radius_is_a_property_of_the_triplet_not_of_the_radii_asked():
    """The float64 refinement was spent only around the asked radii, so 143 of 600 radii changed
    with --eps. Every triplet is now refined to within RADIUS_TOL of the most the method proves for it, so asking
    other radii gives the same radius for every triplet (the same computation: the same bits)."""
    from robustsim.certify.radius import RADIUS_TOL

    metric, data = robustsim.load_metric("lipsim-nano-aoc", dtype="float32"), open_triplets("mini:test", limit=96)
    a = certify_2afc(metric, data, [36 / 255], progress=False)
    b = certify_2afc(metric, data, [0.05, 0.3, 1.0], progress=False)
    assert a is not None and b is not None and torch.equal(a.radius, b.radius)
    # the adaptive deployment refines only around the asked radii: its certified accuracy at a radius is the same
    # whichever other radii are asked (each triplet's radius stays a sound lower bound)
    adaptive = robustsim.load_metric("lipsim-nano-aoc")
    c = certify_2afc(adaptive, data, [36 / 255], progress=False)
    d = certify_2afc(adaptive, data, [0.05, 36 / 255, 1.0], progress=False)
    assert c is not None and d is not None
    near = int(((c.radius - 36 / 255).abs() <= 1e-9 * 36 / 255).sum())  # within float64 noise of the radius asked
    assert abs(c.certified_at(36 / 255) - d.certified_at(36 / 255)) * len(data) <= near + 1e-9
    assert 0 < RADIUS_TOL <= 0.01 and a.details["radius_tolerance"] == RADIUS_TOL


def test_a_metric_deployed_in_float64_applies_the_same_tensors_and_certifies_more():
    """load_metric(name, dtype="float64") runs the same exact function in double precision: its
    outputs agree with the float32 metric's within the float32 rounding bound, its certificates hold (attacked in
    float64) and are at least the float32 ones on most triplets."""
    m32 = robustsim.load_metric("lipsim-nano-aoc")
    m64 = robustsim.load_metric("lipsim-nano-aoc", dtype="float64")
    assert m64.dtype == torch.float64 and m64.lipschitz == m32.lipschitz
    data = open_triplets("mini:test", limit=48)
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(48)]) for k in ("ref", "x0", "x1"))
    e32, _, rounding = embed_with_error(m32, ref)
    assert ((m64.embed(ref.double()) - e32.double()).norm(dim=1) <= rounding.delta).all()
    r32, r64 = certified_radius(m32, ref, x0, x1), certified_radius(m64, ref.double(), x0.double(), x1.double())
    assert (r64 >= r32).double().mean() > 0.9 and (r64 > 0).sum() > (r32 > 0).sum() - 1
    some = slice(0, 24)  # float64 attack steps cost ~8 float32 ones on a CPU
    broken = per_image_pgd(m64, *(t[some].double() for t in (ref, x0, x1)), "ref", 0.999 * r64[some], steps=25)
    assert not (broken & (r64[some] > 0)).any()
    with pytest.raises(robustsim.InputError, match="float32, float64 or adaptive"):
        robustsim.load_metric("l2", dtype="float16")
