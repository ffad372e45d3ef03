"""The reference our attacks are measured against: pyautoattack's APGDAttack (Croce & Hein's own code) called directly
on the 2AFC classifier of the same triplets (logits (d(x, x1), d(x, x0)), one restart), for tests/test_strength.py and
benchmarks/bench_strength.py."""

from __future__ import annotations

import torch

from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin
from robustsim.data.triplets import TripletDataset
from robustsim.metrics.base import Metric
from robustsim.threat import ThreatModel


def reference_apgd(metric: Metric, data: TripletDataset, threat: ThreatModel, steps: int, seed: int) -> torch.Tensor:
    """(N,) bool: the triplets pyautoattack's APGD-CE at ``threat.eps[0]`` leaves decided right (False for those the
    metric decides wrong clean, and for ties). Only the rightly decided triplets are passed to its ``perturb``, so
    its one restart attacks the whole batch and the 2-logit model sees every row in each call."""
    from pyautoattack.autopgd_base import APGDAttack

    n = len(data)
    dev = metric.device
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(n)]).to(dev) for k in ("ref", "x0", "x1"))
    y, keep = labels_from_p(torch.stack([data[i]["p"] for i in range(n)]).to(dev))
    with torch.no_grad():
        right = (margin(TwoAFCClassifier(metric, ref, x0, x1)(ref), y) > 0) & keep
    robust = torch.zeros(n, dtype=torch.bool, device=dev)
    if not right.any():
        return robust.cpu()
    clf = TwoAFCClassifier(metric, ref[right], x0[right], x1[right])
    apgd = APGDAttack(clf, n_iter=steps, norm=threat.ball.foolbox, eps=threat.eps[0], seed=seed, loss="ce", device=dev)
    adv = apgd.perturb(ref[right], y[right])
    with torch.no_grad():
        robust[right] = margin(clf(adv), y[right]) > 0
    return robust
