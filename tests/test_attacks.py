"""Attacks: exact robust accuracy for the pixel l2 metric, ball/box constraints, laws, adapters."""

import math

import pytest
import torch
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from robustsim.attacks import (
    APGD,
    PGD,
    AutoAttack,
    FoolboxAttack,
    RowMatcher,
    apgd,
    embedding_attack,
    make_attack,
    norms,
    pgd,
)
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin

import robustsim
from robustsim.audit import AuditLawError, check_laws, run_audit
from robustsim.data import open_triplets
from robustsim.data.triplets import ArrayTriplets

L2_EPS = [0.25, 0.5, 1.0]
LINF_EPS = [1 / 255, 2 / 255, 4 / 255]


def subset(data, n):
    return data.subset(n)


@pytest.fixture(scope="module")
def mini200():
    return subset(open_triplets("mini"), 200)


def exact_min_distance(ref, x0, x1, y, norm):
    """Smallest ||delta|| (l2 or linf) with ref + delta in [0, 1] flipping the MSE metric's decision.

    MSE: d(x, x1) - d(x, x0) = (2 <x, x0 - x1> + |x1|^2 - |x0|^2) / n, linear in x. The flipped side is
    the halfspace {a.x <= c}; its nearest point in the box along the ball's geometry is found by a
    1-D bisection: l2 -> x(lam) = clamp(ref - lam a, 0, 1); linf -> x(t) = clamp(ref - t sign(a), 0, 1).
    """
    out = []
    for r, a0, a1, lab in zip(ref.double(), x0.double(), x1.double(), y, strict=True):
        r, a0, a1 = r.flatten(), a0.flatten(), a1.flatten()
        # margin(x) = d0 - d1 for label 1, d1 - d0 for label 0; flip when margin(x) <= 0
        w = 2 * (a1 - a0)  # d0 - d1 = (<x, w> + |a0|^2 - |a1|^2) / n
        b = a0 @ a0 - a1 @ a1
        if lab == 0:
            w, b = -w, -b
        direction = w if norm == "l2" else w.sign()

        def value(x, w=w, b=b):  # > 0 correct, <= 0 flipped
            return float(x @ w + b)

        def point(s, r=r, direction=direction):
            return (r - s * direction).clamp(0, 1)

        hi = 1.0
        while value(point(hi)) > 0 and hi < 1e6:
            hi *= 2
        if value(point(hi)) > 0:
            out.append(math.inf)  # the box prevents any flip
            continue
        lo = 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if value(point(mid)) > 0 else (lo, mid)
        delta = point(hi) - r
        out.append(float(delta.norm() if norm == "l2" else delta.abs().max()))
    return torch.tensor(out)


@pytest.mark.parametrize("norm, eps", [("l2", L2_EPS), ("linf", LINF_EPS)])
def test_pgd_and_apgd_reach_the_exact_robust_accuracy_of_l2(mini200, norm, eps):
    metric = robustsim.load_metric("l2")
    batch = {k: torch.stack([mini200[i][k] for i in range(len(mini200))]) for k in ("ref", "x0", "x1", "p")}
    y, _ = labels_from_p(batch["p"])
    clf = TwoAFCClassifier(metric, batch["ref"], batch["x0"], batch["x1"])
    with torch.no_grad():
        correct = margin(clf(batch["ref"]), y) > 0
    dist = exact_min_distance(batch["ref"], batch["x0"], batch["x1"], y, norm)
    exact = [float((correct & (dist > e)).double().mean()) for e in eps]
    for attack in (PGD(norm, steps=100), APGD(norm, "ce", steps=100), APGD(norm, "margin", steps=100)):
        res = attack(metric, mini200, eps, batch_size=100, progress=False)
        assert res.clean_accuracy == pytest.approx(float(correct.double().mean()))
        for got, want in zip(res.robust_accuracy(), exact, strict=True):
            assert got >= want - 1e-9, f"{attack.name} went below the exact robust accuracy: left the ball or box"
            assert got <= want + 0.01, f"{attack.name} is weaker than the exact attack: {got} vs {want}"


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(1e-3, 2.0),
    norm=st.sampled_from(["l2", "linf"]),
    which=st.sampled_from(["pgd", "apgd"]),
)
def test_every_iterate_respects_ball_and_box(seed, eps, norm, which):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box
    x[1] = 1.0
    direction = torch.randn(3, 8, 8, generator=g)
    seen = []

    def objective(xa, rows):
        seen.append((xa.detach().clone(), rows.clone()))
        loss = (xa * direction).flatten(1).sum(1) + xa.pow(3).flatten(1).sum(1)
        return loss, torch.zeros_like(loss, dtype=torch.bool)

    eps_t = torch.full((6,), eps)
    run = pgd if which == "pgd" else apgd
    x_adv, _ = run(objective, x, eps_t, norm, steps=10, generator=g)
    for xa, rows in [*seen, (x_adv, torch.arange(6))]:
        assert torch.all(norms(xa - x[rows], norm) <= eps * (1 + 1e-5) + 1e-6)
        assert xa.min() >= 0 and xa.max() <= 1


def test_runner_rejects_claims_outside_the_ball(mini200):
    class Cheater(PGD):
        def run(self, forward, x, y, eps, generator):  # "breaks" everything by leaving the ball
            return (1 - x), torch.ones(x.shape[0], dtype=torch.bool)

    res = Cheater("l2")(robustsim.load_metric("l2"), subset(mini200, 20), [0.1], progress=False)
    assert res.robust_accuracy()[0] == res.clean_accuracy


def test_adding_attacks_never_raises_robust_accuracy(mini200):
    metric = robustsim.load_metric("ssim")
    data = subset(mini200, 60)
    one, _ = run_audit(metric, data, "linf", LINF_EPS, ["pgd"], steps=10, progress=False)
    two, _ = run_audit(metric, data, "linf", LINF_EPS, ["pgd", "apgd-margin"], steps=10, progress=False)
    assert all(b <= a for a, b in zip(one["robust"], two["robust"], strict=True))
    assert all(r <= two["clean"] for r in two["robust"])
    assert two["version"] == 1 and two["certified"] is None
    assert all(b <= a for a, b in zip(two["robust"], two["robust"][1:], strict=False))


def small_embedding_metric():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )
    return robustsim.EmbeddingMetric(net, input_size=32, mean=0.5, std=0.25, name="cnn").requires_grad_(False)


def test_our_apgd_is_at_least_as_strong_as_pyautoattack(mini200):
    metric = small_embedding_metric()
    data = subset(mini200, 100)
    eps = [0.05, 0.1]
    ours = APGD("l2", "ce", steps=30)(metric, data, eps, batch_size=100, progress=False)
    theirs = make_attack("aa-apgd-ce", "l2", steps=30)(metric, data, eps, batch_size=100, progress=False)
    assert ours.clean_accuracy == theirs.clean_accuracy
    for a, b in zip(ours.robust_accuracy(), theirs.robust_accuracy(), strict=True):
        assert a <= b + 0.01


def test_foolbox_adapter_runs_all_epsilons_in_one_call(mini200, monkeypatch):
    import foolbox as fb

    metric = robustsim.load_metric("l2")
    data = subset(mini200, 40)
    calls = []
    for cls, norm, eps in ((fb.attacks.L2PGD, "l2", L2_EPS), (fb.attacks.LinfPGD, "linf", LINF_EPS)):
        attack = FoolboxAttack(cls(steps=20), norm)
        original = attack.fb_attack.__call__
        monkeypatch.setattr(
            attack, "fb_attack", lambda *a, original=original, **k: calls.append(k["epsilons"]) or original(*a, **k)
        )
        res = attack(metric, data, eps, batch_size=40, progress=False)
        rob = res.robust_accuracy()
        assert all(b <= a for a, b in zip(rob, rob[1:], strict=False)) and rob[0] <= res.clean_accuracy
        ours = PGD(norm, steps=20)(metric, data, eps, batch_size=40, progress=False).robust_accuracy()
        assert all(o <= r + 0.05 for o, r in zip(ours, rob, strict=True))
    assert calls == [L2_EPS, LINF_EPS]  # one foolbox call per batch with every epsilon


def test_row_matcher_maps_subsets_and_refuses_ambiguity():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(5, 3, 4, 4, generator=g)
    seen = []
    matcher = RowMatcher(lambda x, rows: seen.append(rows) or torch.zeros(x.shape[0], 2), clean, "l2")
    perm = torch.tensor([3, 0, 4])
    matcher(clean[perm] + 0.01 * torch.randn(3, 3, 4, 4, generator=g))
    assert seen[-1].tolist() == [3, 0, 4]
    from robustsim.attacks.adapters import AmbiguousQuery

    with pytest.raises(AmbiguousQuery):
        matcher(((clean[0] + clean[1]) / 2)[None])


def test_autoattack_standard_on_two_classes(mini200):
    metric = robustsim.load_metric("l2")
    data = subset(mini200, 24)
    aa = AutoAttack("linf", "standard", n_iter=10, n_queries=50)(
        metric, data, LINF_EPS[1:], batch_size=24, progress=False
    )
    ours = APGD("linf", "ce", steps=50)(metric, data, LINF_EPS[1:], batch_size=24, progress=False)
    assert aa.clean_accuracy == ours.clean_accuracy
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1", "p")}
    y, _ = labels_from_p(batch["p"])
    dist = exact_min_distance(batch["ref"], batch["x0"], batch["x1"], y, "linf")
    clf = TwoAFCClassifier(metric, batch["ref"], batch["x0"], batch["x1"])
    correct = margin(clf(batch["ref"]), y) > 0
    for i, e in enumerate(LINF_EPS[1:]):
        exact = float((correct & (dist > e)).double().mean())
        assert aa.robust_accuracy()[i] >= exact - 1e-9
        assert aa.robust_accuracy()[i] <= exact + 1 / 24 + 1e-9


@pytest.mark.parametrize("target", ["x0", "x1", "all"])
def test_other_targets(mini200, target):
    res = PGD("linf", steps=10)(
        robustsim.load_metric("l2"), subset(mini200, 20), LINF_EPS, target=target, progress=False
    )
    assert all(r <= res.clean_accuracy for r in res.robust_accuracy())
    assert res.examples["adv"].shape[2] == (9 if target == "all" else 3)


def test_ties_are_skipped_and_counted():
    imgs = torch.randint(0, 255, (4, 3, 3, 8, 8), dtype=torch.uint8).numpy()
    data = ArrayTriplets(imgs, torch.tensor([1.0, 0.5, 0.0, 0.5]).numpy(), "t")
    report, _ = run_audit(robustsim.load_metric("l2"), data, "l2", [0.1], ["pgd"], steps=5, progress=False)
    assert report["n"] == 2 and report["skipped_ties"] == 2


def test_embedding_attack_reaches_the_l2_maximum():
    """For MSE, max d(x, x + delta) over the l2 ball is eps^2 / n when the box does not bind."""
    x = torch.full((3, 3, 8, 8), 0.5)
    eps = 0.5
    _, d = embedding_attack(robustsim.load_metric("l2"), x, eps, steps=50)
    assert torch.allclose(d, torch.full((3,), eps**2 / x[0].numel()), rtol=1e-3)


def test_check_laws_fails_loudly():
    base = {
        "eps": [0.1, 0.2],
        "clean": 0.8,
        "robust": [0.6, 0.5],
        "certified": [0.5, 0.4],
        "attacks": {"a": {"robust": [0.6, 0.5]}},
    }
    check_laws(base)
    with pytest.raises(AuditLawError, match="unsound"):
        check_laws({**base, "certified": [0.7, 0.4]})
    with pytest.raises(AuditLawError, match="> clean"):
        check_laws({**base, "robust": [0.9, 0.5], "attacks": {"a": {"robust": [0.9, 0.5]}}})
    with pytest.raises(AuditLawError, match="increases"):
        check_laws({**base, "robust": [0.5, 0.6], "certified": None, "attacks": {"a": {"robust": [0.5, 0.6]}}})


def test_audit_cli(tmp_path, capsys):
    out = tmp_path / "audit"
    code = run_cli(
        [
            "audit",
            "--metric",
            "l2",
            "--data",
            "mini",
            "--limit",
            "20",
            "--steps",
            "5",
            "--attacks",
            "pgd,apgd-margin",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "robust.png", "examples.png"}
    text = capsys.readouterr().out
    assert "robust" in text and "apgd-margin" in text
    assert run_cli(["audit", "--metric", "l2", "--attacks", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
