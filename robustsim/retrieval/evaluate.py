"""Clean, attacked and certified retrieval scores of one metric on one retrieval set.

Everything is per query and streamed over query batches. Attacked scores are the worst case over
every point the attacks found in the ball (plus the clean query, and, since balls nest, the points
found at smaller epsilons); each point is re-checked to lie in the ball and the [0, 1] box and is
scored by its real ranking, not by the attack's own loss. Certified recall@k counts the positives
in the top k whose top-k radius (:mod:`robustsim.certify.retrieval`) exceeds epsilon; linf balls are
certified through ||delta||_2 <= sqrt(d) ||delta||_inf. The laws certified <= attacked <= clean
hold per query or the run fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from robustsim.attacks.registry import make_attack
from robustsim.attacks.retrieval import PullIn, PushOut, attack_queries
from robustsim.audit import AuditLawError
from robustsim.certify.adaptive import decisions
from robustsim.certify.lipschitz import has_certificate
from robustsim.data.retrieval import POSITIVE, RetrievalSet
from robustsim.dist import local_env
from robustsim.errors import InputError
from robustsim.metrics.base import Metric
from robustsim.retrieval import scores
from robustsim.retrieval.index import Backend, EmbeddingGallery, Gallery, build_gallery
from robustsim.runner import run_batches
from robustsim.settings import RETRIEVAL_ATTACK
from robustsim.threat import ThreatModel

AP_CUTOFF = 1000  # AP is computed over the top min(G, AP_CUTOFF) items (exact for smaller galleries)


@dataclass
class Ranking:
    """Recall@k per k and average precision of each query: (Q,) clean, (n_eps, Q) under attack or certified (a
    certificate bounds recall only: ``ap`` None); NaN marks queries without an annotated positive."""

    recall: dict[int, torch.Tensor]
    ap: torch.Tensor | None = None


@dataclass
class RetrievalResult:
    """Per-query outcomes of one metric on one retrieval set: the ``clean`` ranking, the worst ``attacked`` one
    found (None without radii), the ``certified`` one (None without a Lipschitz certificate), the targeted attacks'
    success (n_eps, n_targeted) and each query's certified l2 radius of its clean top-1."""

    metric: str
    data: str
    note: str
    n_gallery: int
    ks: list[int]
    threat: ThreatModel
    clean: Ranking
    roc_auc: float
    unannotated: dict[int, int]
    attacked: Ranking | None = None
    certified: Ranking | None = None
    targeted_success: torch.Tensor | None = None  # (n_eps, n_targeted) bool
    top1_radius: torch.Tensor | None = None  # (Q,) certified l2 radius of the clean top-1
    attacks: list[str] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    decisions: dict = field(default_factory=dict)  # how the rankings were taken (robustsim.certify.adaptive)

    @property
    def clean_recall(self) -> dict[int, torch.Tensor]:
        return self.clean.recall

    @property
    def clean_ap(self) -> torch.Tensor:
        assert self.clean.ap is not None
        return self.clean.ap

    @property
    def attacked_recall(self) -> dict[int, torch.Tensor] | None:
        return None if self.attacked is None else self.attacked.recall

    @property
    def attacked_ap(self) -> torch.Tensor | None:
        return None if self.attacked is None else self.attacked.ap

    @property
    def certified_recall(self) -> dict[int, torch.Tensor] | None:
        return None if self.certified is None else self.certified.recall

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def eps(self) -> list[float]:
        return list(self.threat.eps)

    @property
    def n_queries(self) -> int:
        return int(self.clean_ap.shape[0])

    @property
    def n_scored(self) -> int:
        return int(torch.isfinite(self.clean_ap).sum())

    def summary(self) -> dict:
        """Means over the scored queries (fractions in [0, 1]), one list entry per epsilon."""

        def per_eps(t: torch.Tensor | None) -> list[float] | None:
            return None if t is None else [scores.mean(row) for row in t]

        out = {
            "clean": {f"recall@{k}": scores.mean(v) for k, v in self.clean_recall.items()},
            "attacked": None,
            "certified": None,
            "targeted_success": None,
        }
        out["clean"]["mAP"] = scores.mean(self.clean_ap)
        out["clean"]["roc_auc"] = self.roc_auc
        if self.attacked_recall is not None:
            out["attacked"] = {f"recall@{k}": per_eps(v) for k, v in self.attacked_recall.items()}
            out["attacked"]["mAP"] = per_eps(self.attacked_ap)
        if self.certified_recall is not None:
            out["certified"] = {f"recall@{k}": per_eps(v) for k, v in self.certified_recall.items()}
        if self.targeted_success is not None:
            t = self.targeted_success
            out["targeted_success"] = [float(r.double().mean()) if t.shape[1] else math.nan for r in t]
        if self.top1_radius is not None:
            out["median_top1_radius"] = float(self.top1_radius.median())
        return out


def _rank_scores(rank: torch.Tensor, labels: torch.Tensor, n_pos: torch.Tensor, ks: Sequence[int]):
    rec = {k: scores.recall_at_k(rank, labels, n_pos, k) for k in ks}
    return rec, scores.average_precision(rank, labels, n_pos)


class _Run:
    """One evaluation: the gallery, the radii and the attacks, with the ranking and ball checks every batch uses,
    and what it gathers beyond the per-query rows (the ROC-AUC stream, unannotated counts, examples)."""

    def __init__(
        self, metric: Metric, data: RetrievalSet, gallery: Gallery, ks: list[int], threat: ThreatModel, attacks: list
    ) -> None:
        self.metric, self.data, self.gallery, self.attacks = metric, data, gallery, attacks
        self.ks, self.ball, self.eps = ks, threat.ball, list(threat.eps)
        self.K = min(data.n_ranked, max(max(ks), AP_CUTOFF))
        if max(ks) > data.n_ranked:
            raise InputError(f"k={max(ks)} exceeds the {data.n_ranked} gallery items a query is ranked against")
        self.certify = bool(self.eps) and has_certificate(metric) and isinstance(gallery, EmbeddingGallery)
        self.auc = scores.StreamingAUC()
        self.unannotated = dict.fromkeys(ks, 0)
        self.examples: dict[str, list[torch.Tensor]] = {}

    def search(self, q: torch.Tensor, exc: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return self.gallery.search(q, k or self.K, exc)[1]

    def verified(self, adv: torch.Tensor, q: torch.Tensor, e: float) -> torch.Tensor:
        """Points outside the ball or the box are replaced by the clean query (they do not count)."""
        ok = self.ball.contains(adv, q, e)
        return torch.where(ok.view(-1, 1, 1, 1), adv, q)

    def along_eps(self) -> tuple[str, ...]:
        """The row fields with a radius axis first."""
        kinds = (f"{kind}_recall@{k}" for kind in ("attacked", "certified") for k in self.ks)
        return ("attacked_ap", "targeted", *kinds)

    def clean_rows(self, q, lab, exc, pos, n_pos, rank) -> tuple[dict[str, torch.Tensor], Ranking]:
        """(the batch's clean rows, with its certified ones where there is a certificate; its clean ranking), feeding
        the ROC-AUC and unannotated counts."""
        rec, ap = _rank_scores(rank, lab, n_pos, self.ks)
        out = {f"clean_recall@{k}": rec[k] for k in self.ks}
        out["clean_ap"] = ap
        for k in self.ks:
            self.unannotated[k] += scores.unannotated_in_top_k(rank, lab, k)
        with torch.no_grad():
            sim = self.gallery.exact(q)
        labelled = (lab >= 0) & ~exc
        self.auc.add(sim[labelled], lab[labelled] == POSITIVE)
        if self.certify:
            radii, top1 = _certify(self, q, rank, pos, n_pos, exc)
            out.update({f"certified_recall@{k}": v for k, v in radii.items()}, top1_radius=top1)
        return out, Ranking(rec, ap)

    def attacked_rows(self, q, lab, exc, pos, n_pos, clean: Ranking, gen) -> tuple[Ranking, torch.Tensor]:
        """(the worst ranking any attack found per radius, the point shown per radius: the lowest summed recall)."""
        ks, eps, n_e = self.ks, self.eps, len(self.eps)
        best_rec = {k: clean.recall[k].expand(n_e, -1).clone() for k in ks}
        assert clean.ap is not None
        best_ap = clean.ap.expand(n_e, -1).clone()
        adv_show = q.expand(n_e, *q.shape).clone()
        show_score = sum(best_rec[k] for k in ks)
        for attack in self.attacks:
            # largest k first: pushing every positive out of the top k also clears every smaller top-k,
            # so a smaller k only re-attacks the queries whose positives survived there
            alive = n_pos > 0
            for k in sorted(ks, reverse=True):
                rows = (alive & (best_rec[k] > 0).any(0)).nonzero()[:, 0]
                if rows.numel() == 0:
                    continue
                goal = PushOut(self.gallery.similarity, pos[rows], exc[rows], k)
                adv = attack_queries(attack, goal, q[rows], eps, gen)
                for i, e in enumerate(eps):
                    xa = self.verified(adv[i], q[rows], e)
                    r2, ap2 = _rank_scores(self.search(xa, exc[rows]), lab[rows], n_pos[rows], ks)
                    total = sum(r2[kk] for kk in ks)
                    worse = total < show_score[i, rows]
                    adv_show[i, rows[worse]] = xa[worse]
                    show_score[i, rows[worse]] = total[worse]
                    for kk in ks:
                        best_rec[kk][i, rows] = torch.minimum(best_rec[kk][i, rows], r2[kk])
                    best_ap[i, rows] = torch.minimum(best_ap[i, rows], ap2)
        return Ranking(best_rec, best_ap), adv_show

    def result(self, rows: dict, threat: ThreatModel, attacks: list[str], steps: int, seconds: float):
        """The run's :class:`RetrievalResult` from its gathered per-query rows."""
        ks = self.ks
        nan = lambda t: t.double().where(torch.isfinite(t.double()), torch.nan)  # noqa: E731

        def ranking(kind: str, ap: bool) -> Ranking | None:
            if f"{kind}_recall@{ks[0]}" not in rows:
                return None
            return Ranking({k: nan(rows[f"{kind}_recall@{k}"]) for k in ks}, nan(rows[f"{kind}_ap"]) if ap else None)

        clean = ranking("clean", True)
        assert clean is not None
        return RetrievalResult(
            metric=self.metric.name,
            data=self.data.name,
            note=self.data.note,
            n_gallery=len(self.gallery),
            ks=ks,
            threat=threat,
            clean=clean,
            roc_auc=self.auc.value()[0],
            unannotated=self.unannotated,
            attacked=ranking("attacked", True),
            certified=ranking("certified", False),
            targeted_success=rows.get("targeted"),
            top1_radius=rows["top1_radius"].double() if "top1_radius" in rows else None,
            attacks=attacks,
            steps=steps,
            seconds=seconds,
            examples={k: torch.cat(v) for k, v in self.examples.items()},
            decisions=decisions(self.metric),
        )


class QueryItems(Dataset):
    """The queries of a retrieval set as loader items: {"query": image, "index": i}."""

    def __init__(self, data: RetrievalSet) -> None:
        self.queries = data.queries

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict:
        return {"query": self.queries[i], "index": torch.tensor(i)}


def _query_loader(items: QueryItems, batch_size: int, workers: int | None = None) -> DataLoader:
    """The queries in order, in this process (``workers``, the runner's argument, is not used: the queries are
    already tensors in memory)."""
    return DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=0)


def evaluate_retrieval(
    metric: Metric,
    data: RetrievalSet,
    ks: Sequence[int] = (1, 5, 10),
    threat: ThreatModel | None = None,
    attacks: Sequence[str] = ("apgd-ce",),
    steps: int = RETRIEVAL_ATTACK.steps,
    restarts: int = RETRIEVAL_ATTACK.restarts,
    targeted: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    backend: Backend = "auto",
    n_examples: int = 4,
    progress: bool = True,
    cache_dir: str | None = None,
) -> RetrievalResult:
    """Clean recall@k / mAP / ROC-AUC; with a ``threat`` (the query moving; radii > 0), attacked recall@k and
    mAP (untargeted), the targeted success rate (``targeted``) and, for metrics with a Lipschitz certificate,
    certified recall@k. Images must already be at the metric's input size (open the set with that size)."""
    t0 = time.perf_counter()
    threat = threat if threat is not None else ThreatModel("l2", "ref", ())
    ks, eps = sorted({int(k) for k in ks}), list(threat.eps)
    if not ks or ks[0] < 1:
        raise InputError("k values must be >= 1")
    if eps and eps[0] <= 0:
        raise InputError("attack radii must be > 0 (an empty threat model scores the clean ranking only)")
    metric = metric.to(device).eval()
    gallery = build_gallery(metric, data.gallery, device, backend, cache_dir, batch_size, progress)
    built = [make_attack(a, threat, steps=steps, restarts=restarts, seed=seed) for a in attacks] if eps else []
    run = _Run(metric, data, gallery, ks, threat, built)
    gen = torch.Generator().manual_seed(seed)

    def step(batch: dict, tick) -> dict[str, torch.Tensor]:
        idx, q = batch["index"], batch["query"]
        lab, exc = data.labels[idx].to(q.device), data.exclude[idx].to(q.device)
        pos = (lab == POSITIVE) & ~exc
        n_pos = pos.sum(1)
        rank = run.search(q, exc)
        out, clean = run.clean_rows(q, lab, exc, pos, n_pos, rank)
        adv_show = q.expand(len(eps), *q.shape)
        if eps:  # nested balls: a point found at a smaller epsilon counts at every larger one
            worst, adv_show = run.attacked_rows(q, lab, exc, pos, n_pos, clean, gen)
            out.update({f"attacked_recall@{k}": worst.recall[k].cummin(0).values for k in ks})
            assert worst.ap is not None
            out["attacked_ap"] = worst.ap.cummin(0).values
        if targeted and eps:
            out["targeted"] = _targeted(run, built, q, lab, exc, rank, gen)
        _keep_examples(run.examples, n_examples, q, rank, lab, adv_show, run, exc, data)
        return out

    rows = run_batches(QueryItems(data), step, desc=f"retrieval {metric.name}", batch_size=batch_size, device=device,
                       metric=metric, progress=progress, env=local_env(device), dims=dict.fromkeys(run.along_eps(), 1),
                       images=("query",), loader=_query_loader)  # fmt: skip
    assert rows is not None
    result = run.result(rows, threat, list(attacks) if eps else [], steps, time.perf_counter() - t0)
    check_laws(result)
    return result


def _certify(run: _Run, q, rank, pos, n_pos, exc) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """({k: (n_eps, B) certified recall@k}, (B,) top-1 radii) for this batch."""
    from robustsim.certify.retrieval import retrieval_radii

    assert isinstance(run.gallery, EmbeddingGallery)
    ks = sorted(set(run.ks) | {1})
    radii = retrieval_radii(run.metric, q, run.gallery.phi, rank[:, : max(ks)], ks, exc)
    scale = run.ball.l2_radius(1.0, q[0].numel())  # linf: certified through the containing l2 ball
    out = {}
    for k in run.ks:
        hit = pos.gather(1, rank[:, :k])
        rows = []
        for e in run.eps:
            n_cert = (hit & (radii[k] > e * scale)).sum(1).double()
            frac = n_cert / n_pos.clamp_min(1)
            rows.append(torch.where(n_pos > 0, frac, torch.full_like(frac, float("nan"))))
        out[k] = torch.stack(rows)
    return out, radii[1][:, 0].double()


def _targeted(run: _Run, attacks, q, lab, exc, rank, gen) -> torch.Tensor:
    """(n_eps, B) bool: a random non-positive item (not the clean top-1) became the top-1."""
    allowed = (lab != POSITIVE) & ~exc
    allowed.scatter_(1, rank[:, :1], False)
    weights = allowed.double().cpu()
    weights[weights.sum(1) == 0] = 1.0  # nothing allowed: any pick, reported as a failure below
    target = torch.multinomial(weights, 1, generator=gen)[:, 0].to(q.device)
    ok = torch.zeros(len(run.eps), q.shape[0], dtype=torch.bool)
    goal = PullIn(run.gallery.similarity, target, exc)
    for attack in attacks:
        adv = attack_queries(attack, goal, q, run.eps, gen)
        for i, e in enumerate(run.eps):
            top1 = run.search(run.verified(adv[i], q, e), exc, k=1)[:, 0]
            ok[i] |= ((top1 == target) & allowed.gather(1, target[:, None])[:, 0]).cpu()
    return ok.cummax(0).values


def _keep_examples(store, n, q, rank, lab, adv, run: _Run, exc, data: RetrievalSet) -> None:
    """The first ``n`` queries with their top-k (indices, labels and images), clean and attacked."""
    have = sum(len(t) for t in store.get("query", []))
    take = slice(0, max(0, n - have))
    if take.stop == 0:
        return
    k = max(run.ks)
    images = lambda ranks: torch.stack([torch.stack([data.gallery[int(j)] for j in r]) for r in ranks])  # noqa: E731
    store.setdefault("query", []).append(q[take].cpu())
    store.setdefault("top", []).append(rank[take, :k].cpu())
    store.setdefault("top_images", []).append(images(rank[take, :k].tolist()))
    store.setdefault("top_labels", []).append(lab.gather(1, rank[:, :k])[take].cpu())
    if run.eps:
        xa = adv[-1, take]
        r2 = run.search(xa, exc[take], k)
        store.setdefault("adv", []).append(xa.cpu())
        store.setdefault("adv_top", []).append(r2.cpu())
        store.setdefault("adv_top_images", []).append(images(r2.tolist()))
        store.setdefault("adv_top_labels", []).append(lab[take].gather(1, r2).cpu())


def check_laws(res: RetrievalResult) -> None:
    """certified <= attacked <= clean per query, and attacked non-increasing in epsilon."""
    tol = 1e-9
    for k in res.ks:
        clean = res.clean_recall[k].nan_to_num(0)
        att = res.attacked_recall[k].nan_to_num(0) if res.attacked_recall is not None else None
        if att is not None and ((att > clean + tol).any() or (att[1:] > att[:-1] + tol).any()):
            raise AuditLawError(f"attacked recall@{k} exceeds clean or grows with epsilon")
        if res.certified_recall is not None and att is not None:
            if (res.certified_recall[k].nan_to_num(0) > att + tol).any():
                raise AuditLawError(f"certified recall@{k} exceeds attacked recall: the certificate is unsound")
