"""Retrieval at scale: an attack step with a pixel metric on a 2000-item gallery, the l2
gallery with cached norms (one addmm) vs the pairwise cdist it replaced; and the memory of labels and
ROC-AUC state for a fully annotated 4000 x 8000 set, sparse and streaming vs dense.

Target: attack step <= 0.2x the cdist one; memory linear in queries + gallery.
Run: .venv/bin/python benchmarks/bench_retrieval.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import interleaved, load, ratio_line  # noqa: E402

from robustsim.data.retrieval import NEGATIVE, POSITIVE, PairLabels  # noqa: E402
from robustsim.retrieval.index import Gallery, SquaredL2Gallery  # noqa: E402
from robustsim.retrieval.scores import StreamingAUC  # noqa: E402
from robustsim.zoo import load_metric  # noqa: E402


class CdistGallery(Gallery):
    """What the l2 gallery did before: ``torch.cdist`` of every query-item pair on each call."""

    def __init__(self, images: torch.Tensor) -> None:
        self.flat = images.flatten(1)

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(q.flatten(1), self.flat).pow(2) / self.flat.shape[1]


def attack_step(gallery: Gallery, q: torch.Tensor) -> None:
    """One step of the push-out attack's work: similarities, top-k loss, input gradient."""
    qa = q.clone().requires_grad_(True)
    s = gallery.similarity(qa)
    (g,) = torch.autograd.grad(s.topk(10, dim=1).values.sum(), qa)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images, q = torch.rand(2000, 3, 64, 64, generator=g), torch.rand(32, 3, 64, 64, generator=g)
    fast, old = SquaredL2Gallery(load_metric("l2"), images), CdistGallery(images)
    print(f"load before {load()}; one torch thread; process CPU time")
    t = interleaved({"addmm": lambda: attack_step(fast, q), "cdist": lambda: attack_step(old, q)}, args.repeats)
    print(
        f"l2 attack step, 32 queries x 2000 gallery items of 64 px: cached norms + addmm / cdist "
        f"{ratio_line(t, 'addmm', 'cdist')} (cdist {min(t['cdist']) * 1e3:.0f} ms)"
    )

    Q, G = 4000, 8000
    pos_per_query = 3
    rows = torch.arange(Q).repeat_interleave(pos_per_query)
    cols = torch.randint(0, G, (Q * pos_per_query,), generator=g)
    labels = PairLabels((Q, G), NEGATIVE, rows, cols, torch.full((rows.numel(),), POSITIVE))
    auc = StreamingAUC()
    for start in range(0, Q, 500):  # scores of every labelled pair, 500 queries at a time
        idx = torch.arange(start, start + 500)
        lab = labels[idx]
        auc.add(torch.rand(lab.shape, generator=g), lab == POSITIVE)
    sparse = nbytes(labels.rows, labels.cols, labels.values, labels._starts)
    dense = Q * G * (1 + 1)  # int8 labels + bool exclusions
    kept_pairs = Q * G * (8 + 1)  # every pair's float64 score and bool label, as before
    auc_state = nbytes(*auc.pos, *auc.neg) + (nbytes(auc.hist) if auc.hist is not None else 0)
    print(
        f"fully annotated {Q} x {G} set: labels {sparse / 2**20:.2f} MiB sparse vs {dense / 2**20:.0f} MiB dense; "
        f"ROC-AUC state {auc_state / 2**20:.1f} MiB vs {kept_pairs / 2**20:.0f} MiB keeping every pair "
        f"(AUC {auc.value()[0]:.4f}, folding error <= {auc.value()[1]:.1e})"
    )
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
