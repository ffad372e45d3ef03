"""Issue 17: third-party attacks at full strength and equal to the libraries called directly; our APGD at
least as strong as pyautoattack's at equal iterations; the faster SLL layers, row matching and retrieval
pieces compute what they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from robustsim.attacks import APGD, make_attack
from robustsim.attacks.adapters import _pairwise
from robustsim.attacks.pgd import check_schedule
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin

import robustsim
from robustsim.data import open_triplets
from robustsim.data.retrieval import NEGATIVE, POSITIVE, PairLabels
from robustsim.nn import SLLConv2d, SLLLinear
from robustsim.retrieval.index import PairwiseGallery, SquaredL2Gallery
from robustsim.retrieval.scores import StreamingAUC, roc_auc


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


def test_our_apgd_is_at_least_as_strong_as_pyautoattack_at_equal_iterations():
    """effnet-lite0 (pretrained) on 32 mini:test triplets, l2 0.25 and 0.5, 20 iterations, one restart."""
    metric = robustsim.load_metric("effnet-lite0")
    data = open_triplets("mini", limit=32)
    eps = [0.25, 0.5]
    ours = APGD("l2", "ce", steps=20)(metric, data, eps, batch_size=32, progress=False)
    theirs = make_attack("aa-apgd-ce", "l2", steps=20)(metric, data, eps, batch_size=32, progress=False)
    assert ours.clean_accuracy == theirs.clean_accuracy
    for a, b in zip(ours.robust.sum(1).tolist(), theirs.robust.sum(1).tolist(), strict=True):
        assert a <= b + 1  # triplets still robust
    assert ours.calls < theirs.calls  # early stopping: fewer model calls for that strength


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_row_matching_distances_equal_the_direct_ones(norm):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    diff = a.flatten(1)[:, None].double() - b.flatten(1)[None].double()
    direct = diff.abs().amax(-1) if norm == "linf" else diff.norm(dim=-1)
    assert torch.allclose(_pairwise(a, b, norm), direct, atol=1e-12)


def _paper_sll(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, log_q: torch.Tensor, conv: bool) -> torch.Tensor:
    """h(x) = x - 2 W T^-1 relu(W^T x + b), T = diag(sum_j |W^T W|_ij q_j / q_i), written from the formula."""
    q = log_q.exp()
    if conv:
        k = w.shape[-1]
        gram = F.conv2d(w, w, padding=k - 1).abs().sum((2, 3))
        t = (gram * q[None, :] / q[:, None]).sum(1)
        act = F.relu(F.conv2d(x, w, b, padding=k // 2)) / t[None, :, None, None]
        return x - 2 * F.conv_transpose2d(act, w, padding=k // 2)
    t = ((w @ w.T).abs() * q[None, :] / q[:, None]).sum(1)
    return x - 2 * (F.relu(x @ w.T + b) / t) @ w


@pytest.mark.parametrize("conv", [True, False])
def test_folded_sll_layers_compute_the_papers_formula_in_train_and_cached_eval(conv):
    torch.manual_seed(0)
    layer = SLLConv2d(6) if conv else SLLLinear(12)
    with torch.no_grad():
        layer.log_q.normal_()
    x = torch.randn(4, 6, 9, 9) if conv else torch.randn(4, 12)
    expected = _paper_sll(x, layer.weight, layer.bias, layer.log_q, conv)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.eval().requires_grad_(False)
    assert torch.allclose(layer(x), expected, atol=1e-5) and layer._cache is not None
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place edit invalidates the cached folded kernel
    assert torch.allclose(layer(x), _paper_sll(x, layer.weight, layer.bias, layer.log_q, conv), atol=1e-5)


def test_squared_l2_gallery_matches_the_metric_and_its_gradient():
    metric = robustsim.load_metric("l2")
    g = torch.Generator().manual_seed(0)
    gallery, q = torch.rand(50, 3, 16, 16, generator=g), torch.rand(6, 3, 16, 16, generator=g)
    fast, plain = SquaredL2Gallery(metric, gallery), PairwiseGallery(metric, gallery)
    qa, qb = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    sa, sb = fast.similarity(qa), plain.similarity(qb)
    assert torch.allclose(sa, sb, atol=1e-5) and torch.equal(fast.exact(q), plain.exact(q))
    (ga,) = torch.autograd.grad(sa.sum(), qa)
    (gb,) = torch.autograd.grad(sb.sum(), qb)
    assert torch.allclose(ga, gb, atol=1e-5)


@given(st.integers(0, 10_000), st.integers(2, 400), st.booleans())
@settings(max_examples=40, deadline=None)
def test_streaming_auc_equals_the_exact_one_or_bounds_its_error(seed, n, ties):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g)
    if ties:
        s = (s * 8).round() / 8
    y = torch.rand(n, generator=g) < 0.3
    exact = roc_auc(s, y)
    for cap in (10**9, 5):  # exact mode, and folded into a histogram after 5 negatives
        auc = StreamingAUC(exact=cap, bins=256)
        for part in torch.arange(n).split(37):
            auc.add(s[part], y[part])
        value, err = auc.value()
        if np.isnan(exact):
            assert np.isnan(value)
        elif cap > n:
            assert value == pytest.approx(exact, abs=1e-12) and err == 0
        else:
            assert abs(value - exact) <= err + 1e-12


def test_pair_labels_are_sparse_and_index_like_a_dense_matrix():
    g = torch.Generator().manual_seed(0)
    dense = torch.randint(-1, 2, (9, 13), generator=g, dtype=torch.int8)
    labels = PairLabels.from_dense(dense, NEGATIVE)
    assert torch.equal(labels.dense(), dense) and torch.equal(labels[[4, 1]], dense[[4, 1]])
    assert torch.equal(labels.count(POSITIVE), (dense == POSITIVE).sum(1))
    assert torch.equal(labels.count(NEGATIVE), (dense == NEGATIVE).sum(1))
    assert torch.equal(labels.head(3).dense(), dense[:3])
    big = PairLabels((4000, 8000), NEGATIVE, torch.arange(4000), torch.arange(4000) * 2, torch.ones(4000))
    assert big.rows.numel() == 4000 and big[[7]].shape == (1, 8000) and int(big.count(POSITIVE).sum()) == 4000
