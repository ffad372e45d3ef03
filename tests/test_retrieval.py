"""Retrieval: data layouts, hand-computed scores, exact vs faiss search, attacks, certificate soundness."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, save_png
from hypothesis import given, settings
from hypothesis import strategies as st
from test_certify import small_metric

import robustsim
from robustsim.attacks import APGD
from robustsim.attacks.retrieval import PullIn, PushOut
from robustsim.certify import radius_from_embeddings
from robustsim.certify.retrieval import pairwise_radii, top_k_radii
from robustsim.data import open_retrieval
from robustsim.data.retrieval import NEGATIVE, POSITIVE, PairLabels
from robustsim.nn.rounding import gamma
from robustsim.retrieval import (
    EmbeddingGallery,
    average_precision,
    build_gallery,
    evaluate_retrieval,
    exact_search,
    faiss_search,
    recall_at_k,
    roc_auc,
)
from robustsim.retrieval.index import PairwiseGallery, SquaredL2Gallery
from robustsim.retrieval.scores import StreamingAUC
from robustsim.threat import ThreatModel
from robustsim.zoo import load_metric

# grey levels: the l2 metric ranks these exactly by |level difference|
LEVELS = {"a.png": 128, "b.png": 133, "c.png": 140, "d.png": 153, "e.png": 179, "f.png": 230}


def grey(level: int) -> np.ndarray:
    return np.full((8, 8, 3), level, dtype=np.uint8)


@pytest.fixture
def vsd_dir(tmp_path: Path) -> Path:
    """A VSD layout: images/ + pairs.csv; c is unannotated for query a, d for query f."""
    root = tmp_path / "vsd"
    for name, level in LEVELS.items():
        save_png(root / "images" / name, grey(level))
    rows = ["query,candidate,label", "a.png,b.png,1", "a.png,d.png,1", "a.png,e.png,0", "a.png,f.png,1"]
    rows += ["f.png,e.png,0", "f.png,c.png,1", "f.png,a.png,0"]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def test_vsd_scores_equal_hand_computed_values(vsd_dir: Path, tmp_path: Path):
    # query a ranks b c d e f; positives b d f -> recall@1 1/3, @3 2/3, AP (1 + 2/3 + 3/5) / 3
    # query f ranks e d c b a; positive c -> recall@1 0, @3 1, AP 1/3
    # ROC-AUC: positive similarities -(5, 25, 102, 90)^2 vs negatives -(51, 51, 102)^2 -> 7.5 / 12
    out = tmp_path / "out"
    code = run_cli(
        ["retrieval", "--metric", "l2", "--data", f"vsd:{vsd_dir}", "--k", "1,2,3", "--eps", "0"]
        + [
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    clean = rep["summary"]["clean"]
    ap_a, ap_f = (1 + 2 / 3 + 3 / 5) / 3, 1 / 3
    assert clean["recall@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert clean["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert clean["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert clean["mAP"] == pytest.approx((ap_a + ap_f) / 2)
    assert clean["roc_auc"] == pytest.approx(7.5 / 12)
    assert rep["per_query"]["clean_ap"] == pytest.approx([ap_a, ap_f])
    # top-2: a -> b, c (c unannotated); f -> e, d (d unannotated)
    assert rep["unannotated_in_top_k"] == {"1": 0, "2": 2, "3": 2}
    assert rep["n_queries"] == 2 and rep["n_gallery"] == 6


def test_vsd_query_is_never_ranked_against_itself(vsd_dir: Path):
    data = open_retrieval(f"vsd:{vsd_dir}")
    metric = load_metric("l2")
    gallery = build_gallery(metric, data.gallery)
    q = torch.stack([data.queries[i] for i in range(2)])
    _, idx = gallery.search(q, 5, data.exclude[:2])
    names = sorted(LEVELS)
    assert [[names[i][0] for i in row] for row in idx.tolist()] == [list("bcdef"), list("edcba")]


def test_plain_layout_counts_unlisted_pairs_as_negatives(tmp_path: Path):
    root = tmp_path / "plain"
    save_png(root / "queries" / "q.png", grey(100))
    for name, level in (("near.png", 104), ("mid.png", 120), ("far.png", 200)):
        save_png(root / "gallery" / name, grey(level))
    (root / "positives.csv").write_text("query,positive\nq.png,mid.png\n")
    data = open_retrieval(str(root))  # detected as plain
    assert data.labels.dense().tolist() == [[0, 1, 0]]  # far, mid, near (sorted)
    res = evaluate_retrieval(load_metric("l2"), data, ks=(1, 2), progress=False)
    assert res.summary()["clean"]["recall@1"] == 0.0 and res.summary()["clean"]["recall@2"] == 1.0
    assert res.summary()["clean"]["mAP"] == pytest.approx(0.5)
    assert res.roc_auc == pytest.approx(0.5)  # mid beats far, loses to near
    assert res.unannotated == {1: 0, 2: 0}


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("query,candidate,label\na.png,zz.png,1\n", "'zz.png' is not an image under"),
        ("query,candidate,label\na.png,b.png,yes\n", "label 'yes' must be 1"),
        ("query,candidate\na.png,b.png\n", "lacks column(s) label"),
        ("query,candidate,label\na.png,b.png,1\na.png,b.png,0\n", "both 0 and 1"),
    ],
)
def test_bad_vsd_csv_is_one_line_exit_2_and_no_output(vsd_dir, tmp_path, capsys, csv_text, message):
    (vsd_dir / "pairs.csv").write_text(csv_text)
    out = tmp_path / "out"
    code = run_cli(["retrieval", "--metric", "l2", "--data", f"vsd:{vsd_dir}", "--k", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_k_larger_than_the_gallery_is_refused(vsd_dir, capsys):
    code = run_cli(["retrieval", "--metric", "l2", "--data", f"vsd:{vsd_dir}", "--k", "1,6", "--eps", "0"])
    assert code == 2 and "exceeds the 5 gallery items" in capsys.readouterr().err


@pytest.mark.portable
def test_exact_and_faiss_search_return_the_same_top_k_on_10k_items():
    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(10_000, 64, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(200, 64, generator=g), dim=1)
    s_exact, i_exact = exact_search(queries, gallery, 10, chunk=1500)  # several chunks
    s_faiss, i_faiss = faiss_search(queries, gallery, 10)
    s_full, i_full = (queries @ gallery.T).topk(10, dim=1)
    # three computations of 64-term inner products (chunked GEMM, faiss's BLAS, one GEMM), each within
    # gamma_64 * sum |q_i g_i| <= gamma_64 of the exact one (unit vectors): their top-10 sets agree up to items
    # whose exact similarity lies within that of the 10th best (a tie at float32 resolution)
    tol = 2 * gamma(64, 2.0**-24)
    exact = queries.double() @ gallery.double().T
    tenth = exact.topk(10, dim=1).values[:, -1:]
    for scores, idx in ((s_exact, i_exact), (s_faiss, i_faiss), (s_full, i_full)):
        assert all(len(set(r)) == 10 for r in idx.tolist())  # ten distinct items
        assert (exact.gather(1, idx) >= tenth - tol).all()  # every returned item is a top-10 item or tied with one
        assert torch.allclose(scores.double(), exact.gather(1, idx), atol=tol, rtol=0)
        assert torch.allclose(scores.double(), exact.topk(10, dim=1).values, atol=2 * tol, rtol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(2, 30), st.integers(0, 10_000))
def test_scores_match_brute_force(n_q, n_g, seed):
    g = torch.Generator().manual_seed(seed)
    sims = torch.randn(n_q, n_g, generator=g)
    labels = torch.randint(-1, 2, (n_q, n_g), generator=g, dtype=torch.int8)
    n_pos = (labels == 1).sum(1)
    rank = sims.argsort(dim=1, descending=True)
    for k in (1, n_g):
        rec = recall_at_k(rank, labels, n_pos, k)
        for qi in range(n_q):
            pos = set((labels[qi] == 1).nonzero()[:, 0].tolist())
            if not pos:
                assert rec[qi].isnan()
                continue
            assert rec[qi] == pytest.approx(len(pos & set(rank[qi, :k].tolist())) / len(pos))
    ap = average_precision(rank, labels, n_pos)
    for qi in range(n_q):
        pos = (labels[qi] == 1).nonzero()[:, 0].tolist()
        if pos:
            r = [int((rank[qi] == p).nonzero()) + 1 for p in pos]
            expected = sum(sum(1 for rr in r if rr <= ri) / ri for ri in r) / len(r)
            assert ap[qi] == pytest.approx(expected)
            assert 0 < ap[qi] <= 1
    lab = labels >= 0
    s, y = sims[lab], labels[lab] == 1
    if y.any() and (~y).any():
        sp, sn = s[y], s[~y]
        brute = ((sp[:, None] > sn[None]).double() + 0.5 * (sp[:, None] == sn[None]).double()).mean()
        assert roc_auc(s, y) == pytest.approx(float(brute))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_pairwise_radius_equals_the_2afc_radius(seed):
    """R(a, j) with x as reference, j as x0 and a as x1 is the 2AFC radius of certify.radius where a ranks
    above j, and 0 where it does not (nothing to certify)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(3, 8, generator=g)
    phi = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    top = (f @ phi.T).argsort(dim=1, descending=True)[:, :3]
    r = pairwise_radii(f, phi, top, lipschitz=2.0)
    for b in range(3):
        for i in range(3):
            for j in range(6):
                if j == top[b, i]:
                    assert r[b, i, j] == torch.inf
                    continue
                ref = radius_from_embeddings(f[b : b + 1], phi[j : j + 1], phi[top[b, i]][None], 2.0)
                a_wins = float(f[b] @ (phi[top[b, i]] - phi[j])) > 0
                assert r[b, i, j] == pytest.approx(float(ref) if a_wins else 0.0, rel=1e-4, abs=1e-6)
                assert a_wins or i > 0  # the top item beats everyone


def _lipschitz_gallery(n_items: int = 24, seed: int = 0):
    metric = small_metric(seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    items = torch.rand(n_items, 3, 16, 16, generator=g)
    with torch.no_grad():
        phi = torch.nn.functional.normalize(metric.embed(items), dim=1)
    return metric, EmbeddingGallery(metric, phi, "exact")


def test_certified_top_k_survives_a_strong_attack_on_500_queries():
    """No APGD attack (50 steps, 2 restarts) at 0.99 R pushes a certified item out of its top-k,
    for k = 1 (the top-1 radius) and k = 3; at 3 R the same attack does succeed, so it has teeth."""
    metric, gallery = _lipschitz_gallery()
    g = torch.Generator().manual_seed(7)
    q = torch.rand(500, 3, 16, 16, generator=g)
    with torch.no_grad():
        f = metric.embed(q)
    top = gallery.search(q, 3)[1]
    radii = top_k_radii(f, gallery.phi, top, 1.0, (1, 3))
    exclude = torch.zeros(500, len(gallery), dtype=torch.bool)
    attack = APGD("l2", loss="margin", steps=50, restarts=2, seed=0)
    broken_outside = 0
    for k, item in ((1, 0), (3, 2)):  # the top-1, and the third item of the top-3
        target = torch.zeros(500, len(gallery), dtype=torch.bool)
        target[torch.arange(500), top[:, item]] = True
        goal = PushOut(gallery.similarity, target, exclude, k)
        y = torch.ones(500, dtype=torch.long)
        r = radii[k][:, item]
        assert (r > 0).all() and r.median() > 1e-3
        for scale in (0.99, 3.0):
            x_adv, _ = attack.run(goal, q, y, scale * r, torch.Generator().manual_seed(k))
            assert ((x_adv - q).flatten(1).norm(dim=1) <= scale * r * (1 + 1e-5) + 1e-6).all()
            new_top = gallery.search(x_adv, k)[1]
            still = (new_top == top[:, item : item + 1]).any(1)
            if scale < 1:
                assert still.all(), f"certified item left the top-{k} inside its radius"
            else:
                broken_outside += int((~still).sum())
    assert broken_outside > 50


def test_retrieval_attacks_lower_recall_and_keep_the_laws():
    """lipsim-nano on 24 bundled queries: attacked <= clean, certified <= attacked (checked per query),
    recall@5 falls at l2 eps 1, and the targeted attack succeeds at a large radius."""
    metric = load_metric("lipsim-nano")
    data = open_retrieval("mini", size=metric.input_size).subset(24)
    threat = ThreatModel("l2", "ref", (0.25, 1.0, 4.0))
    res = evaluate_retrieval(metric, data, ks=(1, 5), threat=threat, steps=10, targeted=True, progress=False)
    s = res.summary()
    assert s["attacked"]["recall@5"][1] < s["clean"]["recall@5"] - 0.1
    assert s["attacked"]["recall@5"][0] >= s["attacked"]["recall@5"][1] >= s["attacked"]["recall@5"][2]
    for k in (1, 5):
        pairs = zip(s["certified"][f"recall@{k}"], s["attacked"][f"recall@{k}"], strict=True)
        assert all(c <= a + 1e-9 for c, a in pairs)
    assert s["targeted_success"][2] > 0.5
    assert res.top1_radius is not None and (res.top1_radius >= 0).all()


@pytest.mark.portable
def test_pull_in_logits_break_exactly_when_the_target_is_top_1():
    metric, gallery = _lipschitz_gallery(8)
    q = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    exclude = torch.zeros(16, 8, dtype=torch.bool)
    with torch.no_grad():
        top1 = gallery.search(q, 1)[1][:, 0]
        best2 = gallery.similarity(q).topk(2, dim=1).values
        # the search and the logits compute the similarities in two ways (a top-k GEMM; a GEMM minus 1): they
        # agree on the top-1 item wherever it leads the second by more than float32 rounding of cosines
        clear = best2[:, 0] - best2[:, 1] > 1e-5
        assert clear.sum() >= 12
        for t in range(8):
            target = torch.full((16,), t)
            z = PullIn(gallery.similarity, target, exclude)(q, torch.arange(16))
            assert torch.equal((z[:, 0] >= z[:, 1])[clear], (top1 == t)[clear])


def test_gallery_embeddings_are_cached_per_metric_weights(tmp_path: Path):
    from robustsim.data.imageset import ArrayImages

    images = ArrayImages(np.random.default_rng(0).integers(0, 256, (10, 3, 16, 16), dtype=np.uint8), None, "t", "t")
    metric = small_metric(0)
    g1 = build_gallery(metric, images, cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.glob("gallery-*.npy"))
    assert len(files) == 1
    g2 = build_gallery(metric, images, cache_dir=tmp_path, progress=False)
    assert torch.equal(g1.phi, g2.phi) and sorted(tmp_path.glob("gallery-*.npy")) == files
    with torch.no_grad():
        expected = torch.nn.functional.normalize(metric.embed(torch.stack([images[i] for i in range(10)])), dim=1)
    assert torch.allclose(g1.phi, expected, atol=1e-6)
    build_gallery(small_metric(1), images, cache_dir=tmp_path, progress=False)  # other weights, other file
    assert len(list(tmp_path.glob("gallery-*.npy"))) == 2


def test_bundled_retrieval_set_is_deterministic_and_documented():
    a, b = open_retrieval("mini"), open_retrieval("mini")
    assert len(a.queries) == 80 and len(a.gallery) == 480
    assert (a.n_positives == 3).all() and torch.equal(a.labels.dense(), b.labels.dense())
    assert torch.equal(a.queries[5], b.queries[5]) and "synthetic" in a.note
    from robustsim.data.mini_retrieval import generate

    q, g, content = generate()
    assert np.array_equal(q, np.asarray(a.queries.array)) and np.array_equal(g, np.asarray(a.gallery.array))


def test_cli_writes_report_and_figures_and_faiss_matches_exact(tmp_path: Path):
    outs = {}
    for backend in ("exact", "faiss"):
        out = tmp_path / backend
        argv = ["retrieval", "--metric", "lipsim-nano", "--limit", "8", "--eps", "0.5", "--steps", "3"]
        code = run_cli([*argv, "--index", backend, "--out", str(out), "--device", "cpu"])
        assert code == 0
        assert {p.name for p in out.iterdir()} == {
            "report.json",
            "report.md",
            "report.html",
            "recall.png",
            "queries.png",
        }
        outs[backend] = json.loads((out / "report.json").read_text())
    exact, faiss = outs["exact"], outs["faiss"]
    assert exact["per_query"]["clean_recall"] == faiss["per_query"]["clean_recall"]
    assert exact["summary"]["clean"] == pytest.approx(faiss["summary"]["clean"])
    assert exact["n_queries"] == 8 and exact["eps"] == [0.5] and exact["summary"]["certified"] is not None
    from PIL import Image

    with Image.open(tmp_path / "exact" / "queries.png") as im:
        assert im.size[0] > 600 and im.size[1] > 400  # 4 queries x (clean, attacked) rows, 11 columns


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
