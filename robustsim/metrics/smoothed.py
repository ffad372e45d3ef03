"""Randomized smoothing for the 2AFC decision of any metric (Cohen, Rosenfeld & Kolter 2019): the smoothed metric
and its certificate, a metric wrapper like the others (attacks and audits take it without importing robustsim.certify).

Base decision c(x) = 1 when d(x, x1) < d(x, x0) (the metric picks x1), else 0, for a reference x; x0
and x1 are fixed. The smoothed decision g(x) = argmax_c P(c(x + N(0, sigma^2 I)) = c). If the top class
has probability pA >= pA_lower > 1/2, then g is constant on the l2 ball of radius sigma Phi^-1(pA_lower)
around x (their Theorem 1). The certificate is for g, the smoothed metric, not for the base metric.

``certify`` draws the noise in batches and bounds pA with a one-sided Clopper-Pearson interval:

- ``n0 > 0`` (Cohen's CERTIFY): n0 samples select the top class, n more estimate it at confidence
  1 - alpha;
- ``n0 = 0`` (default, two classes only): the n samples serve both classes, each bounded at 1 - alpha/2;
  at most one bound can exceed 1/2, and a union bound keeps the error rate at alpha while saving the
  selection draw.

Either way, with probability >= 1 - alpha over the sampling a returned radius is sound; when no class
clears 1/2 the triplet abstains (radius -1, decision -1). Noise is added to the [0, 1] image and not
clipped (the base metric sees values outside [0, 1]; Cohen et al. do the same).
"""

from __future__ import annotations

import torch
from scipy.stats import beta, binomtest, norm

from robustsim.checks import count_arg
from robustsim.metrics.base import EmbeddingMetric, Metric, metric_arg
from robustsim.settings import SmoothingSettings

ABSTAIN = -1


def clopper_pearson_lower(k: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """One-sided lower confidence bound (level 1 - alpha) of a binomial proportion with k successes of n."""
    ks = k.double().cpu().numpy()
    out = beta.ppf(alpha, ks, n - ks + 1)
    return torch.from_numpy(out).nan_to_num(0.0).where(k.cpu() > 0, torch.zeros(1, dtype=torch.float64))


def stream_seed(seed: int, triplet: int, stream: int) -> int:
    """The seed of one triplet's noise stream (``stream`` 0: selection, 1: estimation, 2: prediction)."""
    return (seed * 1_000_003 + triplet * 7919 + stream * 104_729 + 1) % (2**63 - 1)


class SmoothedMetric:
    """The smoothed 2AFC decision of ``metric`` under Gaussian noise on the reference, as an object:
    :meth:`predict` (with abstention), :meth:`certify` (decision and radius) and :meth:`probability`.

    ``n`` noisy samples per triplet, ``n0`` selection samples (0: see module docstring), failure
    probability ``alpha``, ``batch`` noisy images per forward pass, ``seed`` for the noise. Each triplet's
    noise comes from its own stream (the seed, the triplet's id and the draw's purpose), drawn on the metric's
    device: a triplet gets the same noise whatever batch, shard or process certifies it."""

    def __init__(
        self,
        metric: Metric,
        sigma: float,
        n: int = SmoothingSettings.n,
        n0: int = SmoothingSettings.n0,
        alpha: float = SmoothingSettings.alpha,
        batch: int = 256,
        seed: int = 0,
    ) -> None:
        self.metric = metric_arg(metric).eval()
        self.settings = SmoothingSettings(sigma, n, n0, alpha)  # checked there
        self.sigma, self.n, self.n0, self.alpha = self.settings.sigma, n, n0, self.settings.alpha
        self.batch, self.seed = count_arg(batch, "batch"), count_arg(seed, "seed", 0)

    @torch.no_grad()
    def counts(
        self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, n: int, ids=None, stream: int = 1
    ) -> torch.Tensor:
        """(B,) how many of ``n`` noisy copies of each reference the base metric sends to x1; triplet i's noise
        is stream ``stream`` of id ``ids[i]`` (default: its position in the batch)."""
        m, b = self.metric, ref.shape[0]
        ids = torch.arange(b) if ids is None else torch.as_tensor(ids).reshape(-1)
        fixed = None
        if isinstance(m, EmbeddingMetric):
            fixed = m._embed(m.as_input(torch.cat([x0, x1]))).split(b)
        out = torch.zeros(b, dtype=torch.long)
        for i in range(b):
            g = torch.Generator(device=ref.device).manual_seed(stream_seed(self.seed, int(ids[i]), stream))
            for start in range(0, n, self.batch):
                k = min(self.batch, n - start)
                noise = torch.randn((k, *ref.shape[1:]), generator=g, device=ref.device, dtype=ref.dtype)
                noisy = m.as_input(ref[i : i + 1] + self.sigma * noise)
                if fixed is not None:
                    e = m._embed(noisy)
                    d0 = m.embedding_distance(e, fixed[0][i : i + 1].expand(k, -1))
                    d1 = m.embedding_distance(e, fixed[1][i : i + 1].expand(k, -1))
                else:
                    d0 = m.distance(noisy, m.as_input(x0[i : i + 1]).expand(k, -1, -1, -1))
                    d1 = m.distance(noisy, m.as_input(x1[i : i + 1]).expand(k, -1, -1, -1))
                out[i] += int((d1 < d0).sum())
        return out

    def probability(
        self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, n: int | None = None, ids=None
    ) -> torch.Tensor:
        """(B,) Monte-Carlo estimate of P(base decision = x1) under the noise."""
        n = n or self.n
        return self.counts(ref, x0, x1, n, ids).double() / n

    def predict(
        self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, n: int | None = None, ids=None
    ) -> torch.Tensor:
        """(B,) smoothed decision: 1 (x1), 0 (x0), or -1 (abstain) when a two-sided binomial test cannot
        tell the classes apart at level alpha (Cohen's PREDICT; wrong with probability <= alpha)."""
        n = n or self.n
        k = self.counts(ref, x0, x1, n, ids, stream=2)
        out = torch.full_like(k, ABSTAIN)
        for i, ki in enumerate(k.tolist()):
            if binomtest(max(ki, n - ki), n, 0.5).pvalue <= self.alpha:
                out[i] = 1 if ki > n - ki else 0
        return out

    def certify(
        self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, ids=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(decision (B,) 1 / 0 / -1, radius (B,) float64, -1 on abstention); see the module docstring.
        ``ids`` name each triplet's noise stream (default: its position in the batch)."""
        if self.n0 > 0:
            top = (self.counts(ref, x0, x1, self.n0, ids, stream=0) * 2 > self.n0).long()
            k1 = self.counts(ref, x0, x1, self.n, ids)
            k_top = torch.where(top == 1, k1, self.n - k1)
            p_low = clopper_pearson_lower(k_top, self.n, self.alpha)
        else:
            k1 = self.counts(ref, x0, x1, self.n, ids)
            top = (k1 * 2 > self.n).long()
            k_top = torch.where(top == 1, k1, self.n - k1)
            p_low = clopper_pearson_lower(k_top, self.n, self.alpha / 2)
        radius = self.sigma * torch.from_numpy(norm.ppf(p_low.clamp(max=1 - 1e-16).numpy()))
        ok = p_low > 0.5
        decision = torch.where(ok, top, torch.full_like(top, ABSTAIN))
        return decision, torch.where(ok, radius, torch.full_like(radius, -1.0))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, n={self.n}, n0={self.n0}, alpha={self.alpha}"

    def __repr__(self) -> str:
        return f"SmoothedMetric({self.metric.name!r}, {self.extra_repr()})"

