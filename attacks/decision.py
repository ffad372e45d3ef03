"""What judges an attacked triplet: the metric's own 2AFC decision (:class:`Decision`) or a smoothed metric's
prediction (:class:`SmoothedDecision`: an abstention or a flip is not robust). The attack runner asks its
decision what the attack queries, which clean decisions are correct, and whether a claimed break holds; it never
branches on the kind of metric itself."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustsim.attacks.twoafc import NoisyReference, TwoAFCClassifier, margin
from robustsim.certify.adaptive import is_adaptive
from robustsim.metrics.base import Metric
from robustsim.metrics.smoothed import ABSTAIN, SmoothedMetric, stream_seed
from robustsim.threat import ThreatModel

Judge = Callable[[torch.Tensor], torch.Tensor]  # points (R, ...) -> (R,) bool: the decision there is not correct


class Decision:
    """The metric's own decision: the attack queries the metric, a break holds where the margin of the decision
    the deployed metric takes is <= 0 (an adaptive metric's: its exact decision, robustsim.certify.adaptive)."""

    smoothed: SmoothedMetric | None = None

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    @staticmethod
    def of(metric: Metric | SmoothedMetric, threat: ThreatModel) -> Decision:
        """The decision that judges ``metric`` (a smoothed one moves only the reference: InputError otherwise)."""
        if isinstance(metric, SmoothedMetric):
            threat.require_reference("an attack on a smoothed metric")
            return SmoothedDecision(metric)
        return Decision(metric)

    def attacked(self, clf: TwoAFCClassifier, batch: dict, seed: int) -> nn.Module:
        """What the attack queries on this batch."""
        return clf

    def confirm(self, batch: dict, y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The re-check a randomised forward must also pass before a row counts as broken (None: the margin)."""
        return None

    @torch.no_grad()
    def clean(self, clf: TwoAFCClassifier, batch: dict, y: torch.Tensor, keep: torch.Tensor):
        """(correct, abstained) clean decisions of the batch's counted triplets."""
        logits = clf.decide(clf.clean_input(), phase="clean") if is_adaptive(self.metric) else clf.clean_logits()
        return (margin(logits, y) > 0) & keep, torch.zeros_like(keep)

    def wrong(self, clf: TwoAFCClassifier, batch: dict, rows: torch.Tensor, y: torch.Tensor) -> Judge:
        """Whether the decision at attacked points of ``rows`` is not correct."""
        yr = y[rows]
        return lambda a: margin(clf.decide(a, rows), yr) <= 0

    def holds(self, claimed: torch.Tensor, verified: torch.Tensor) -> torch.Tensor:
        """Breaks that count: the attack's claims that pass the re-check."""
        return claimed & verified


class SmoothedDecision(Decision):
    """A smoothed metric's prediction: the attack sees one noise draw per model call (EoT averages them); every
    final point, claimed or not, is judged by the smoothed prediction (abstaining is not correct)."""

    def __init__(self, smoothed: SmoothedMetric) -> None:
        super().__init__(smoothed.metric)
        self.smoothed = smoothed

    def attacked(self, clf: TwoAFCClassifier, batch: dict, seed: int) -> nn.Module:
        device = batch["ref"].device
        g = torch.Generator(device=device).manual_seed(stream_seed(seed, int(batch["index"][0]), 3))
        return NoisyReference(clf, self.smoothed.sigma, g)

    def confirm(self, batch: dict, y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        smoothed, x0, x1 = self.smoothed, batch["x0"], batch["x1"]

        def confirm(xa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            ids = batch["index"][rows.cpu()]
            with torch.autocast(xa.device.type, enabled=False):  # the re-check's own arithmetic
                decided = smoothed.predict(xa.float(), x0[rows], x1[rows], ids=ids)
            return decided.to(y.device) != y[rows]

        return confirm

    @torch.no_grad()
    def clean(self, clf: TwoAFCClassifier, batch: dict, y: torch.Tensor, keep: torch.Tensor):
        decided = self.smoothed.predict(batch["ref"], batch["x0"], batch["x1"], ids=batch["index"]).to(y.device)
        return (decided == y) & keep, (decided == ABSTAIN) & keep

    def wrong(self, clf: TwoAFCClassifier, batch: dict, rows: torch.Tensor, y: torch.Tensor) -> Judge:
        smoothed, yr, ids = self.smoothed, y[rows], batch["index"][rows.cpu()]
        x0, x1 = batch["x0"][rows], batch["x1"][rows]
        return lambda a: smoothed.predict(a, x0, x1, ids=ids).to(yr.device) != yr

    def holds(self, claimed: torch.Tensor, verified: torch.Tensor) -> torch.Tensor:
        return verified  # claimed by a noisy draw or not
