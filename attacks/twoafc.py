"""The 2AFC decision as a 2-class classifier (docs/audit.md).

For fixed x0, x1 and a perturbed reference x the logits are z = (d(x, x1), d(x, x0)): class 0 means
"x0 is closer", class 1 "x1 is closer". Label = human majority (p > 0.5 -> 1); p = 0.5 is skipped.
Embedding metrics embed the fixed images once, so each attack step costs one pass on the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from robustsim.certify.adaptive import adaptive_distances, is_adaptive
from robustsim.metrics.base import EmbeddingMetric, Metric
from robustsim.threat import TARGETS, Target


def labels_from_p(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, keep): label 1 when p > 0.5, 0 when p < 0.5; ``keep`` is False for p == 0.5."""
    return (p > 0.5).long(), p != 0.5


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - z_{1-y}: > 0 iff the metric agrees with the label (0 is a tie, not correct).
    The difference is taken in float64, so near-ties are decided by the distances, not by rounding."""
    z_true = logits.gather(1, y[:, None])[:, 0]
    z_other = logits.gather(1, (1 - y)[:, None])[:, 0]
    return z_true.double() - z_other.double()


IMAGES = ("ref", "x0", "x1")


def embed_clean(metric: EmbeddingMetric, x: torch.Tensor) -> torch.Tensor:
    """One image set's embeddings as the classifier computes them (one call per set, the metric's dtype)."""
    with torch.no_grad():
        return metric._embed(metric.as_input(x))


class CleanEmbeddings:
    """The clean images of each triplet embedded once per run and reused by every attack, radius, threat model and
    cell that meets the triplet again (kept per triplet index, so a batch regathered from several, such as a
    larger radius' survivors, reuses them too): an audit's second attack, the bench's second threat model. Each
    triplet's embeddings are those of the batch that first met it, computed exactly as
    :class:`TwoAFCClassifier` computes them, so reuse changes no number."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def get(self, metric: Metric, batch: dict) -> dict[str, torch.Tensor] | None:
        if not isinstance(metric, EmbeddingMetric):
            return None
        keys = [(id(metric), int(i)) for i in batch["index"].tolist()]
        new = [j for j, key in enumerate(keys) if key not in self._rows]
        if new:  # the batch's triplets not met before, embedded together
            at = torch.tensor(new, device=batch["ref"].device)
            fresh = {k: embed_clean(metric, batch[k] if len(new) == len(keys) else batch[k][at]) for k in IMAGES}
            for r, j in enumerate(new):
                self._rows[keys[j]] = {k: v[r] for k, v in fresh.items()}
        return {k: torch.stack([self._rows[key][k] for key in keys]) for k in IMAGES}


class TwoAFCClassifier(nn.Module):
    """Logits (B, 2) of the 2AFC decision as a function of the perturbed image(s).

    ``target`` says what the attacker moves: ``ref`` (standard), ``x0``, ``x1`` or ``all`` (input
    then has shape (B, 3 * 3, H, W): ref, x0, x1 stacked on channels).
    """

    def __init__(
        self,
        metric: Metric,
        ref: torch.Tensor,
        x0: torch.Tensor,
        x1: torch.Tensor,
        target: Target = "ref",
        embedded: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.metric, self.target = metric, target
        self.ref, self.x0, self.x1 = ref, x0, x1
        self._fixed: dict[str, torch.Tensor] = {}
        self._clean = embedded if isinstance(metric, EmbeddingMetric) and target != "all" else None
        if isinstance(metric, EmbeddingMetric):
            with torch.no_grad():
                for name in ("ref", "x0", "x1"):
                    if name != target and target != "all":
                        self._fixed[name] = (
                            self._clean[name] if self._clean else embed_clean(metric, getattr(self, name))
                        )

    def clean_logits(self) -> torch.Tensor:
        """The logits of the clean images: from ``embedded`` (the images embedded once per run, as this class
        embeds them, so the numbers are the same) where given, else one forward."""
        if self._clean is None:
            with torch.no_grad():
                return self(self.clean_input())
        m = self.metric
        assert isinstance(m, EmbeddingMetric)
        e = self._clean
        return torch.stack([m.embedding_distance(e["ref"], e["x1"]), m.embedding_distance(e["ref"], e["x0"])], dim=1)

    def clean_input(self) -> torch.Tensor:
        if self.target == "all":
            return torch.cat([self.ref, self.x0, self.x1], dim=1)
        return getattr(self, self.target)

    @torch.no_grad()
    def decide(self, x: torch.Tensor, rows: torch.Tensor | None = None, phase: str = "attack") -> torch.Tensor:
        """The logits that judge the decision at ``x``: :meth:`forward`'s, or for an adaptive metric
        (:mod:`robustsim.certify.adaptive`) its float64 distances, whose comparison is its exact decision."""
        m = self.metric
        if not is_adaptive(m):
            return self(x, rows)
        assert isinstance(m, EmbeddingMetric)
        moved = dict(zip(IMAGES, x.split(3, dim=1), strict=True)) if self.target == "all" else {self.target: x}

        def image(k: str) -> torch.Tensor:
            fixed = getattr(self, k)
            return m.as_input(moved[k] if k in moved else fixed if rows is None else fixed[rows])

        d0, d1 = adaptive_distances(m, image("ref"), image("x0"), image("x1"), phase)
        return torch.stack([d1, d0], dim=1)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the perturbed input ``x``; ``rows`` selects which triplets ``x`` belongs to."""
        imgs = {}
        if self.target == "all":
            imgs["ref"], imgs["x0"], imgs["x1"] = x.split(3, dim=1)
        else:
            imgs[self.target] = x
        m = self.metric
        if isinstance(m, EmbeddingMetric):
            emb = {}
            moving = [k for k in ("ref", "x0", "x1") if k in imgs]
            if moving:  # as_input: the metric's dtype (a bfloat16 or float64 copy of a metric attacks alike)
                e = m._embed(m.as_input(torch.cat([imgs[k] for k in moving])))
                emb.update(zip(moving, e.split(x.shape[0]), strict=True))
            for k, v in self._fixed.items():
                emb[k] = v if rows is None else v[rows]
            d1 = m.embedding_distance(emb["ref"], emb["x1"])
            d0 = m.embedding_distance(emb["ref"], emb["x0"])
        else:

            def get(k: str) -> torch.Tensor:
                x = imgs[k] if k in imgs else (getattr(self, k) if rows is None else getattr(self, k)[rows])
                return m.as_input(x)

            d1 = m.distance(get("ref"), get("x1"))
            d0 = m.distance(get("ref"), get("x0"))
        return torch.stack([d1, d0], dim=1)


class NoisyReference(nn.Module):
    """The logits of ``clf`` with Gaussian noise of std ``sigma`` added to the moving image at every call: the
    base decision a smoothed metric votes over, one fresh draw per call (EoT averages the gradient over calls)."""

    def __init__(self, clf: TwoAFCClassifier, sigma: float, generator: torch.Generator) -> None:
        super().__init__()
        self.clf, self.sigma, self.generator = clf, sigma, generator

    def clean_input(self) -> torch.Tensor:
        return self.clf.clean_input()

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return self.clf(x + self.sigma * noise, rows)
