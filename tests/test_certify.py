"""Certificate soundness, tightness, the published formula's over-claim, the CLI."""

import json

import pytest
import torch
from conftest import linear_metric, per_image_pgd, run_cli, triplets
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustsim
from robustsim.attacks import classifier_objective, embedding_attack, margin, pgd
from robustsim.attacks.twoafc import TwoAFCClassifier
from robustsim.certify import (
    certified_radius,
    certify_2afc,
    embed_with_error,
    embedding_distance_bound,
    radius_from_embeddings,
)
from robustsim.data import open_triplets
from robustsim.metrics import EmbeddingMetric
from robustsim.models import LipSimMetric, LipSimNet, LipSimPreset, save_checkpoint


def small_metric(seed: int = 0) -> LipSimMetric:
    torch.manual_seed(seed)
    return LipSimMetric(LipSimNet(LipSimPreset(2, 8, 1, 64), embed_dim=32, input_size=16))


def random_triplets(n: int, size: int = 16, seed: int = 0, spread: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size, size, generator=g)
    noise = lambda: (base + spread * (torch.rand(n, 3, size, size, generator=g) - 0.5)).clamp(0, 1)  # noqa: E731
    return base, noise(), noise()


def attack_at(metric, ref, x0, x1, radius, steps=100, restarts=2, random_init=True):
    """Strong l2 PGD on the reference against the metric's *own* clean decision at per-triplet radius."""
    clf = TwoAFCClassifier(metric, ref, x0, x1)
    with torch.no_grad():
        logits = clf(ref)
    y = (logits[:, 1] > logits[:, 0]).long()  # 1 if x1 is closer
    forward = lambda xa, rows: clf(xa, rows)  # noqa: E731
    x_adv, broken = pgd(
        classifier_objective(forward, y, "margin"),
        ref,
        radius,
        "l2",
        steps=steps,
        restarts=restarts,
        random_init=random_init,
        generator=torch.Generator().manual_seed(1),
    )
    with torch.no_grad():
        flipped = margin(clf(x_adv), y) <= 0
    # x_adv = ref + delta is rounded per pixel (half an ulp of values <= 1): allow that, nothing more
    rounding = 0.5 * torch.finfo(ref.dtype).eps * ref[0].numel() ** 0.5
    assert torch.all((x_adv - ref).flatten(1).norm(dim=1) <= radius * (1 + 1e-6) + rounding)
    return flipped


def test_sound_radius_is_never_broken_by_a_strong_attack():
    """>= 1000 random triplets, PGD 100 steps x 2 restarts at 0.99 R never changes the decision."""
    flips_inside, flips_outside = 0, 0
    for seed in range(3):
        metric = small_metric(seed)
        ref, x0, x1 = random_triplets(400, seed=seed)
        r = certified_radius(metric, ref, x0, x1)
        assert torch.all(r >= 0)
        flips_inside += int(attack_at(metric, ref, x0, x1, 0.99 * r).sum())
        flips_outside += int(attack_at(metric, ref, x0, x1, 20 * r + 0.05, steps=50, restarts=1).sum())
    assert flips_inside == 0
    assert flips_outside > 100  # the attack is strong enough to break most triplets farther out


def centred_linear_metric() -> EmbeddingMetric:
    """f(x) = x - 0.5 (flattened): exactly linear up to a shift, Lipschitz constant exactly 1.
    Float64: at 1.01 R the flip changes 1 - cos by ~1e-9, below float32 resolution."""
    return EmbeddingMetric(nn.Flatten(), mean=0.5, std=1.0, lipschitz=1.0, name="linear").double()


def test_sound_equals_lipsim_at_unit_norm_and_lipsim_over_claims_below():
    g = torch.Generator().manual_seed(0)
    e0, e1, e = (torch.randn(50, 8, generator=g) for _ in range(3))
    unit = e / e.norm(dim=1, keepdim=True)
    assert torch.allclose(
        radius_from_embeddings(unit, e0, e1, 1.0, "sound"),
        radius_from_embeddings(unit, e0, e1, 1.0, "lipsim"),
        atol=1e-6,
    )
    small = 0.3 * unit
    assert torch.all(radius_from_embeddings(small, e0, e1, 1.0) < radius_from_embeddings(small, e0, e1, 1.0, "lipsim"))
    # the over-claim is real: on the linear net (||f(x)|| < 1) an attack between the radii succeeds
    metric = centred_linear_metric()
    ref, x0, x1 = (t.double() for t in random_triplets(200, size=4, seed=5, spread=0.1))
    ref = 0.5 + 0.05 * (ref - 0.5)
    sound = certified_radius(metric, ref, x0, x1, mode="sound")
    lipsim = certified_radius(metric, ref, x0, x1, mode="lipsim")
    assert torch.all(metric.embed(ref).norm(dim=1) < 1)
    flipped = attack_at(metric, ref, x0, x1, 1.01 * sound, restarts=1, random_init=False)
    claimed_safe = lipsim > 1.01 * sound
    assert (flipped & claimed_safe).sum() > 0.9 * len(ref)


def test_ties_get_radius_zero():
    e = torch.randn(3, 5)
    assert torch.all(radius_from_embeddings(e, e, e, 1.0) == 0)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), eps=st.floats(0.01, 0.5))
def test_embedding_certificate_bounds_the_embedding_attack(seed, eps):
    metric = small_metric(seed)
    x, _, _ = random_triplets(8, seed=seed)
    bound = embedding_distance_bound(metric, x, eps)
    _, d = embedding_attack(metric, x, eps, steps=40, seed=seed)
    assert torch.all(d <= bound + 1e-6)


def test_certify_2afc_on_mini_streams_and_obeys_laws():
    torch.manual_seed(0)
    metric = LipSimMetric(LipSimNet("nano", embed_dim=64, input_size=64))
    data = open_triplets("mini", limit=240)
    eps = [0.0, 36 / 255, 72 / 255, 108 / 255]
    res = certify_2afc(metric, data, eps, batch_size=100, progress=False)
    curve = [res.certified_at(e) for e in eps]
    assert len(res.radius) == len(data)
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))
    assert curve[0] <= res.clean_score
    # certified at eps counts exactly the correct triplets whose radius exceeds eps
    manual = float(((res.clean == 1) & (res.radius > eps[1])).double().mean())
    assert res.certified_at(eps[1]) == pytest.approx(manual)
    assert json.loads(json.dumps(res.to_json()))["curve"][1]["eps"] == eps[1]


def test_non_lipschitz_metric_is_refused_with_pointer_to_smoothing_and_audit():
    ref, x0, x1 = random_triplets(2)
    with pytest.raises(robustsim.RobustsimError, match="certify_smoothed.*robustsim.audit.run_audit"):
        certified_radius(robustsim.load_metric("l2"), ref, x0, x1)


def test_certify_cli(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", LipSimNet("nano", embed_dim=64, input_size=64))
    out, plot = tmp_path / "c.json", tmp_path / "c.png"
    code = run_cli(
        [
            "certify",
            "--metric",
            str(ckpt),
            "--data",
            "mini",
            "--limit",
            "40",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert len(report["triplets"]) == 40 and len(report["curve"]) == 3
    assert plot.stat().st_size > 1000
    assert "certified" in capsys.readouterr().out
    assert run_cli(["certify", "--metric", "l2", "--data", "mini", "--method", "lipschitz"]) == 2
    assert "robustsim audit" in capsys.readouterr().err


def test_radius_is_tight_for_linear_and_isometric_nets():
    """A centred linear net (far from the box) and an isometric one at its input size: no attack breaks a
    triplet inside 0.99 R; just outside, PGD breaks them (from the clean point along the constant boundary
    normal); and the radius equals the exact-arithmetic one up to the stated rounding bound."""
    metric = centred_linear_metric()
    ref, x0, x1 = (t.double() for t in random_triplets(300, size=4, seed=3, spread=0.1))
    ref = 0.5 + 0.05 * (ref - 0.5)  # near the centre: the box never binds
    r = certified_radius(metric, ref, x0, x1)
    assert not attack_at(metric, ref, x0, x1, 0.99 * r).any()
    assert attack_at(metric, ref, x0, x1, 1.01 * r, restarts=1, random_init=False).float().mean() >= 0.99

    metric = linear_metric(3, 4, 48, 1.0, 1.0, isometric=True)  # 48 = 3 x 4 x 4: an isometry
    ref, x0, x1 = triplets(3, 200, 4, spread=0.1)
    r = certified_radius(metric, ref, x0, x1)
    _, e, _ = embed_with_error(metric, torch.cat([ref, x0, x1]))
    a, f0, f1 = e.split(200)
    u = nn.functional.normalize(f1, dim=1) - nn.functional.normalize(f0, dim=1)
    plain = (a * u).sum(1).abs() / u.norm(dim=1)  # the radius with no rounding slack
    assert torch.all(r <= plain) and torch.all(plain - r <= 1e-9 * (1 + plain))  # tight up to the bound
    assert not per_image_pgd(metric, ref, x0, x1, "ref", 0.99 * r, steps=100).any()
    assert per_image_pgd(metric, ref, x0, x1, "ref", 1.02 * r, steps=100).float().mean() > 0.95


def test_results_print_as_one_line_summaries_with_their_units():
    """A CertifyResult / AuditReport prints as its numbers in %, not a wall of tensors, and
    ``.rows()`` gives them as plain dicts in % (the attributes stay fractions, as the repr says)."""
    import robustsim
    from robustsim.audit import run_audit
    from robustsim.certify import certify_2afc
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel

    metric, data = robustsim.load_metric("lipsim-nano"), open_triplets("mini:test", limit=12)
    threat = ThreatModel("l2", "ref", (36 / 255, 72 / 255))
    res = certify_2afc(metric, data, threat, progress=False)
    text = repr(res)
    assert "tensor" not in text and len(text) < 300 and "36/255" in text and "%" in text
    assert f"clean {100 * res.clean_score:.1f} %" in text
    rows = res.rows()
    assert [r["eps"] for r in rows] == ["36/255", "72/255"]
    assert rows[0]["certified"] == pytest.approx(100 * res.certified_at(36 / 255))
    report = run_audit(metric, data, threat, ["apgd-ce"], steps=2, progress=False)
    text = repr(report)
    assert "tensor" not in text and len(text) < 300 and f"clean {100 * report.clean:.1f} %" in text
    assert report.rows()[1]["robust"] == pytest.approx(100 * report.robust[1])
