"""Retrieval scores against annotations (VSD protocol): recall@k, average precision, ROC-AUC.

A *ranking* is (Q, K) gallery indices, best first (K may be smaller than the gallery). Labels are
(Q, G) int8: 1 positive, 0 negative, -1 unannotated. Unannotated items count as not relevant (their
share of the top-k is reported beside the scores). Queries without an annotated positive get NaN
and are left out of the means.

- recall@k = |positives in the top k| / |positives| (the IR definition: with 3 positives, a perfect
  recall@1 is 1/3).
- AP = (1 / |positives|) * sum over positives ranked within the K listed of precision at their rank;
  positives ranked below K add 0 (so AP is exact when K is the whole gallery).
- ROC-AUC over every labelled (query, candidate) pair, score = similarity, ties count one half.
"""

from __future__ import annotations

import torch

from robustsim.data.retrieval import POSITIVE, UNANNOTATED
from robustsim.errors import InputError


def _relevant(ranking: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return labels.gather(1, ranking) == POSITIVE


def _per_query(values: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    out = values.double() / n_pos.clamp_min(1).double()
    return torch.where(n_pos > 0, out, torch.full_like(out, float("nan")))


def recall_at_k(ranking: torch.Tensor, labels: torch.Tensor, n_pos: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) share of each query's positives found in its top ``k`` (NaN without positives)."""
    if k > ranking.shape[1]:
        raise InputError(f"k={k} exceeds the {ranking.shape[1]} ranked items")
    return _per_query(_relevant(ranking[:, :k], labels).sum(1), n_pos)


def average_precision(ranking: torch.Tensor, labels: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """(Q,) average precision over the annotated positives (NaN without positives)."""
    rel = _relevant(ranking, labels).double()
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision = rel.cumsum(1) / ranks
    return _per_query((precision * rel).sum(1), n_pos)


def unannotated_in_top_k(ranking: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many of the Q x k top-k items carry no annotation."""
    return int((labels.gather(1, ranking[:, :k]) == UNANNOTATED).sum())


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U, ties = 1/2).

    NaN when either class is empty."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def mean(values: torch.Tensor) -> float:
    """Mean over the finite entries (queries with positives); NaN when none."""
    ok = torch.isfinite(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


class StreamingAUC:
    """ROC-AUC over (score, is-positive) pairs that arrive in batches, in memory linear in the positives.

    Positives are kept exactly. Negatives are kept exactly up to ``exact`` values (then the result equals
    :func:`roc_auc`); past that they are folded into a histogram of ``bins`` bins over the range seen so
    far (later scores outside it fall into the end bins), and :meth:`value` also returns the largest
    error that folding can cause (half the share of positive-negative pairs that share a bin).
    """

    def __init__(self, exact: int = 4_000_000, bins: int = 1 << 20) -> None:
        self.exact, self.bins = exact, bins
        self.pos: list[torch.Tensor] = []
        self.neg: list[torch.Tensor] = []
        self.n_neg = 0
        self.hist: torch.Tensor | None = None
        self.lo = self.hi = 0.0

    def add(self, scores: torch.Tensor, positive: torch.Tensor) -> None:
        scores, positive = scores.detach().double().flatten().cpu(), positive.flatten().bool().cpu()
        self.pos.append(scores[positive])
        neg = scores[~positive]
        self.n_neg += neg.numel()
        if self.hist is None:
            self.neg.append(neg)
            if self.n_neg > self.exact:
                everything = torch.cat(self.neg)
                self.lo, self.hi = float(everything.min()), float(everything.max())
                self.hi = self.hi if self.hi > self.lo else self.lo + 1.0
                self.hist = torch.zeros(self.bins, dtype=torch.long)
                self.neg = []
                self._fold(everything)
        else:
            self._fold(neg)

    def _bin(self, s: torch.Tensor) -> torch.Tensor:
        pos = (s - self.lo) / (self.hi - self.lo) * self.bins
        return pos.floor().long().clamp(0, self.bins - 1)

    def _fold(self, s: torch.Tensor) -> None:
        assert self.hist is not None
        self.hist += torch.bincount(self._bin(s), minlength=self.bins)

    def value(self) -> tuple[float, float]:
        """(AUC, largest error from folding; 0 when exact). NaN when a class is empty."""
        pos = torch.cat(self.pos) if self.pos else torch.zeros(0, dtype=torch.float64)
        if pos.numel() == 0 or self.n_neg == 0:
            return float("nan"), 0.0
        if self.hist is None:
            neg = torch.sort(torch.cat(self.neg)).values
            below = torch.searchsorted(neg, pos, right=False).double()
            equal = torch.searchsorted(neg, pos, right=True).double() - below
            return float((below + equal / 2).sum() / (pos.numel() * self.n_neg)), 0.0
        b = self._bin(pos)
        cum = torch.cat([torch.zeros(1, dtype=torch.long), self.hist.cumsum(0)])
        below, same = cum[b].double(), self.hist[b].double()
        pairs = pos.numel() * self.n_neg
        return float((below + same / 2).sum() / pairs), float((same / 2).sum() / pairs)
