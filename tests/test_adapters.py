"""Third-party attacks (robustsim.attacks.adapters): pyautoattack and foolbox at full strength and equal to
the libraries called directly, row matching for subset calls, our APGD at least as strong as pyautoattack's."""

from __future__ import annotations

import pytest
import torch
from conftest import L2_EPS, LINF_EPS, exact_min_distance, small_embedding_metric, subset
from hypothesis import given, settings
from hypothesis import strategies as st

import robustsim
from robustsim.attacks import (
    APGD,
    PGD,
    AutoAttack,
    FoolboxAttack,
    RowMatcher,
    make_attack,
)
from robustsim.attacks.adapters import _pairwise
from robustsim.attacks.optim import check_schedule
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin
from robustsim.data import open_triplets


def correct_batch(metric, n: int, size: int | None = None):
    """The first ``n`` mini:test triplets the metric gets right: (classifier, x, y)."""
    data = open_triplets("mini", size=size, limit=n)
    b = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1", "p")}
    clf = TwoAFCClassifier(metric, b["ref"], b["x0"], b["x1"])
    y, _ = labels_from_p(b["p"])
    ok = (margin(clf(b["ref"]), y) > 0).nonzero()[:, 0]
    sub = open_triplets("mini", size=size, limit=n)
    rows = ok.tolist()
    return TwoAFCClassifier(metric, b["ref"][ok], b["x0"][ok], b["x1"][ok]), b["ref"][ok], y[ok], sub, rows


def robust_rows(clf, x_adv, y) -> set[int]:
    with torch.no_grad():
        return set((margin(clf(x_adv), y) > 0).nonzero()[:, 0].tolist())


def test_pyautoattack_adapter_equals_the_library_called_directly():
    from pyautoattack.autopgd_base import APGDAttack

    metric = robustsim.load_metric("lipsim-nano")
    clf, x, y, data, rows = correct_batch(metric, 24, metric.input_size)
    eps, steps = 0.5, 10
    direct = APGDAttack(clf, n_iter=steps, n_restarts=1, eps=eps, norm="L2", seed=0, loss="ce", device="cpu")
    theirs = robust_rows(clf, direct.perturb(x, y), y)
    ours = make_attack("aa-apgd-ce", "l2", steps=steps, seed=0)(metric, data, [eps], progress=False)
    assert set(ours.robust[0].nonzero()[:, 0].tolist()) == {rows[i] for i in theirs}
    assert len(theirs) < len(rows)  # the attack did something


def test_the_adapter_sets_the_checkpoint_schedule_of_its_iteration_count():
    from pyautoattack.autopgd_base import APGDAttack

    attack = make_attack("aa-apgd-ce", "l2", steps=20)
    aa = attack._build(torch.nn.Identity(), 0.5, torch.device("cpu"))
    fresh = APGDAttack(torch.nn.Identity(), n_iter=20, eps=0.5, norm="L2")
    for name in ("n_iter", "n_iter_2", "n_iter_min", "size_decr"):
        assert getattr(aa.apgd, name) == getattr(fresh, name) == getattr(aa.apgd_targeted, name)
    assert aa.apgd.n_iter_2 == 4  # 0.22 * 20, not the 22 of the 100-iteration default


@given(st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_our_checkpoints_are_pyautoattacks(steps):
    k, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    theirs, counter = {}, 0
    for i in range(steps):  # pyautoattack's loop: check when `counter == k`
        counter += 1
        if counter == k:
            theirs[i + 1] = k
            k, counter = max(k - shrink, shortest), 0
    assert check_schedule(steps) == theirs


def test_foolbox_adapter_equals_foolbox_called_directly():
    import foolbox as fb

    metric = robustsim.load_metric("l2")
    clf, x, y, data, rows = correct_batch(metric, 32)
    eps, steps = [0.5, 1.0], 10
    torch.manual_seed(0)
    attack = fb.attacks.L2PGD(steps=steps, rel_stepsize=2.5 / steps)
    _, clipped, success = attack(fb.PyTorchModel(clf.eval(), bounds=(0, 1), device="cpu"), x, y, epsilons=eps)
    ours = make_attack("foolbox-pgd", "l2", steps=steps, seed=0)(metric, data, eps, batch_size=32, progress=False)
    for i in range(len(eps)):
        theirs = {rows[j] for j in (~success[i]).nonzero()[:, 0].tolist()}
        assert set(ours.robust[i].nonzero()[:, 0].tolist()) == theirs
    assert ours.robust_accuracy()[1] < ours.clean_accuracy


SETTINGS = {  # metric, triplets, l2 radii, iterations
    "cnn": (small_embedding_metric, 100, [0.05, 0.1], 30),
    "effnet-lite0": (lambda: robustsim.load_metric("effnet-lite0"), 32, [0.25, 0.5], 20),
}


@pytest.mark.parametrize("setting", [pytest.param("cnn"), pytest.param("effnet-lite0", marks=pytest.mark.slow)])
def test_our_apgd_is_at_least_as_strong_as_pyautoattack_at_equal_iterations(setting):
    """A small random CNN and the pretrained effnet-lite0 on mini triplets, one restart: our APGD breaks at least
    as many triplets as pyautoattack's at every radius (up to one), with fewer model calls (early stopping)."""
    make_metric, n, eps, steps = SETTINGS[setting]
    metric, data = make_metric(), open_triplets("mini", limit=n)
    ours = APGD("l2", loss="ce", steps=steps)(metric, data, eps, batch_size=n, progress=False)
    theirs = make_attack("aa-apgd-ce", "l2", steps=steps)(metric, data, eps, batch_size=n, progress=False)
    assert ours.clean_accuracy == theirs.clean_accuracy
    for a, b in zip(ours.robust.sum(1).tolist(), theirs.robust.sum(1).tolist(), strict=True):
        assert a <= b + 1  # triplets still robust
    assert ours.calls < theirs.calls


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_row_matching_distances_equal_the_direct_ones(norm):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    diff = a.flatten(1)[:, None].double() - b.flatten(1)[None].double()
    direct = diff.abs().amax(-1) if norm == "linf" else diff.norm(dim=-1)
    assert torch.allclose(_pairwise(a, b, norm), direct, atol=1e-12)


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
    aa = AutoAttack("linf", version="standard", steps=10, n_queries=50)(
        metric, data, LINF_EPS[1:], batch_size=24, progress=False
    )
    ours = APGD("linf", loss="ce", steps=50)(metric, data, LINF_EPS[1:], batch_size=24, progress=False)
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
