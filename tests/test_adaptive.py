"""The adaptive deployment (robustsim.certify.adaptive): its decision is the exact one wherever float64 resolves
it, on random triplets and on near-ties built to land inside float32's rounding band, and no float64 attack inside
a radius it certifies changes it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_certify import random_triplets

import robustsim
from robustsim.attacks import classifier_objective, margin, pgd
from robustsim.attacks.twoafc import TwoAFCClassifier
from robustsim.certify.adaptive import adaptive_batch, adaptive_distances, tally
from robustsim.certify.radius import chord, decided
from robustsim.certify.rounding import U64, cosine_slack, embed_with_error, twin
from robustsim.models import LipSimMetric, LipSimNet, LipSimPreset
from robustsim.scoring import two_afc_choice


def adaptive_metric(seed: int) -> LipSimMetric:
    torch.manual_seed(seed)
    metric = LipSimMetric(LipSimNet(LipSimPreset(2, 8, 1, 64), embed_dim=32, input_size=16)).eval()
    metric.decisions = "adaptive"
    return metric


def any_evaluation(rounding) -> torch.Tensor:
    """(B,) how far any float64 evaluation of the same images (another batch, layout or kernel) can lie from this
    one's embeddings: this one's bound to the exact embeddings plus the other's, at most ``at(0)``."""
    return rounding.delta + rounding.at(0.0)


def float64_verdict(metric, ref, x0, x1):
    """(the float64 twin's decision, whether every float64 evaluation, whatever its kernels and batch, takes it and
    it is the exact one: resolved within :func:`any_evaluation` of these estimates)."""
    n = ref.shape[0]
    with torch.no_grad():
        _, e, rounding = embed_with_error(twin(metric), torch.cat([ref, x0, x1]).double())
    est = e.split(n)
    choice = two_afc_choice(*(metric.embedding_distance(est[0], t) for t in est[1:]))
    return choice, decided(est, any_evaluation(rounding).split(n), cosine_slack(e.shape[1], U64))


def near_ties(metric, ref, x0, x1, offsets=(0.0, 1e-9, -1e-9, 1e-7, -1e-7, 1e-5, -1e-5)):
    """Triplets whose x1 sits on the float64 decision boundary between x0 and x1 (bisection along the segment), and
    at tiny offsets from it: margins inside float32's band, some inside float64's."""
    tw = twin(metric)
    lo = torch.zeros(ref.shape[0], dtype=torch.float64)
    hi = torch.ones_like(lo)

    def side(t: torch.Tensor) -> torch.Tensor:
        mid = x0.double() + t.view(-1, 1, 1, 1) * (x1.double() - x0.double())
        with torch.no_grad():
            e = tw._embed(torch.cat([ref.double(), x0.double(), mid]))
        a, b, c = e.split(ref.shape[0])
        return tw.embedding_distance(a, c) < tw.embedding_distance(a, b)  # the moving copy wins

    start = side(hi)  # at t = 1 the moving copy is x1 itself; at t = 0 it ties x0 exactly
    for _ in range(60):
        mid = (lo + hi) / 2
        same = side(mid) == start
        hi, lo = torch.where(same, mid, hi), torch.where(same, lo, mid)
    out = []
    for off in offsets:
        t = (hi + off).clamp(0, 1).view(-1, 1, 1, 1)
        out.append((ref, x0, (x0.double() + t * (x1.double() - x0.double())).float().clamp(0, 1)))
    return [torch.cat(parts) for parts in zip(*out, strict=True)]


def check_law(metric, ref, x0, x1) -> tuple[int, int]:
    """The adaptive decision equals float64's wherever float64 resolves it (for every float64 evaluation: the
    adaptive one runs its fallback rows in another batch); (fallbacks, rows float64 resolves)."""
    before = tally(metric).counts.get("clean", [0, 0])[1]
    d0, d1 = adaptive_distances(metric, ref, x0, x1)
    choice64, resolved64 = float64_verdict(metric, ref, x0, x1)
    adaptive = two_afc_choice(d0, d1)
    assert torch.equal(adaptive[resolved64], choice64[resolved64])  # decisions proven equal, not kernel bits
    return tally(metric).counts["clean"][1] - before, int(resolved64.sum())


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), spread=st.floats(0.05, 0.8))
def test_the_adaptive_decision_is_the_exact_one_on_random_and_near_tie_triplets(seed, spread):
    metric = adaptive_metric(seed % 3)
    ref, x0, x1 = random_triplets(24, seed=seed, spread=spread)
    check_law(metric, ref, x0, x1)
    fallbacks, resolved = check_law(metric, *near_ties(metric, ref, x0, x1))
    assert fallbacks > 0  # near-ties land inside float32's band: float64 answers them
    assert resolved > 0


def test_float32_alone_would_get_some_near_ties_wrong_or_unsure():
    """The near-tie construction reaches float32's band: plain float32 decisions differ from float64's there or
    its bound cannot resolve them, which is what the adaptive deployment exists for."""
    metric = adaptive_metric(0)
    ref, x0, x1 = near_ties(metric, *random_triplets(32, seed=5))
    with torch.no_grad():
        _, e, rounding = embed_with_error(metric, torch.cat([ref, x0, x1]))
    n = ref.shape[0]
    unsure = ~decided(e.split(n), rounding.delta.split(n), cosine_slack(e.shape[1], U64))
    assert int(unsure.sum()) >= n // 2


@pytest.mark.parametrize("seed", [0, 1])
def test_no_float64_attack_inside_an_adaptive_radius_changes_the_adaptive_decision(seed):
    """The adaptive certificate (the float64 deployment's), attacked by float64 PGD at 0.99 R on the twin: the
    adaptive decision at every point found equals its clean decision; farther out the attack does break."""
    metric = adaptive_metric(seed)
    ref, x0, x1 = random_triplets(96, seed=10 + seed)
    L = robustsim.certify.input_lipschitz(metric, (16, 16))[0]
    radius, choice, _ = adaptive_batch(metric, ref, x0, x1, "ref", L)
    rows = (radius > 1e-3).nonzero()[:, 0]
    assert rows.numel() > 20
    ref, x0, x1, radius, choice = ref[rows], x0[rows], x1[rows], radius[rows], choice[rows]
    tw = twin(metric)
    y = choice.long()
    flips = {}
    clf64 = TwoAFCClassifier(tw, ref.double(), x0.double(), x1.double())
    for name, scale in (("inside", 0.99), ("outside", 20.0)):
        x_adv, _ = pgd(classifier_objective(lambda xa, r: clf64(xa, r), y, "margin"), ref.double(),
                       scale * radius + (0.05 if scale > 1 else 0.0), "l2", steps=60, restarts=2,
                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
        judged = TwoAFCClassifier(metric, ref, x0, x1).decide(x_adv.float())
        flips[name] = int((margin(judged, y) <= 0).sum())
    assert flips["inside"] == 0
    assert flips["outside"] > rows.numel() // 4


def test_the_shipped_certified_metric_is_adaptive_and_its_certificate_is_float64s():
    """lipsim-nano-aoc deploys adaptively by default; on 128 mini:test triplets its certified accuracy is the
    float64 deployment's at every radius, and dtype="float32" still gives the plain float32 deployment."""
    from robustsim.certify import certify_2afc
    from robustsim.data import open_triplets

    data = open_triplets("mini:test", limit=128)
    eps = [36 / 255, 72 / 255, 108 / 255]
    adaptive = robustsim.load_metric("lipsim-nano-aoc")
    assert adaptive.decisions == "adaptive"
    plain = robustsim.load_metric("lipsim-nano-aoc", dtype="float32")
    double = robustsim.load_metric("lipsim-nano-aoc", dtype="float64")
    res = {k: certify_2afc(m, data, eps, progress=False) for k, m in
           (("adaptive", adaptive), ("float32", plain), ("float64", double))}  # fmt: skip
    n = len(data)
    for e in eps:
        # two computations of the same radii (float32 lower bounds and the twin on some rows, the twin on all):
        # they can part only for a triplet whose radius lies within float64 noise of the asked radius
        near = int(((res["float64"].radius - e).abs() <= 1e-9 * e).sum())
        assert abs(res["adaptive"].certified_at(e) - res["float64"].certified_at(e)) * n <= near + 1e-9
        assert res["float32"].certified_at(e) <= res["adaptive"].certified_at(e)
    assert res["adaptive"].certified_at(eps[0]) > res["float32"].certified_at(eps[0])
    assert res["adaptive"].details["dtype"] == "adaptive" and res["float32"].details["dtype"] == "float32"
    assert 0.0 < res["adaptive"].details["decisions"]["clean"]["fallback_rate"] < 0.5


def test_an_adaptive_ranking_is_the_float64_ranking_and_its_radii_are_at_least_float32s():
    """Retrieval through the adaptive deployment: the top k it returns is the float64 twin's top k (on a gallery
    with near-duplicate directions, so float32 is unsure for some queries), and its certified top-k radii are at
    least the plain float32 deployment's."""
    from robustsim.certify.adaptive import adaptive_search
    from robustsim.certify.retrieval import retrieval_radii

    metric = adaptive_metric(3)
    ref, x0, x1 = random_triplets(40, seed=4, spread=0.3)
    jitter = 1e-3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    gallery = torch.cat([x0, x1, (x0 + jitter).clamp(0, 1)])  # near-duplicates of x0
    with torch.no_grad():
        phi = torch.nn.functional.normalize(metric.embed(gallery), dim=1)
        _, e64, rounding = embed_with_error(twin(metric), ref.double())
    s64 = (e64 / e64.norm(dim=1, keepdim=True)) @ phi.double().T
    k = 5
    _, top = adaptive_search(metric, ref, phi, k)
    best = s64.topk(k + 1, dim=1)
    # rows whose float64 top k every float64 evaluation shares: each similarity lies within w of this one's
    w = chord(any_evaluation(rounding), e64.norm(dim=1)) + 1e-12
    clear = (best.values[:, :-1] - best.values[:, 1:] > 2 * w[:, None]).all(1)
    assert clear.sum() > 30 and torch.equal(top[clear], best.indices[clear, :k])  # rankings proven equal
    assert tally(metric).counts["retrieval"][1] > 0  # the near-duplicates sent some queries to float64
    adaptive = retrieval_radii(metric, ref, phi, top, [1, k])
    metric.decisions = "plain"
    plain = retrieval_radii(metric, ref, phi, top, [1, k])
    for kk in (1, k):
        assert (adaptive[kk] >= plain[kk] - 1e-12).all() and (adaptive[kk] > plain[kk]).any()
