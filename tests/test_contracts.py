"""Contracts over every registered name, like foolbox's table of attack targets: each attack of the registry,
each zoo row (its build opens exactly the weight files it declares; the metrics that can run here speak the
Metric protocol). A new attack or zoo row is tested here without a line added. (Every layer kind of
``robustsim.nn.LAYERS`` is tested by ``test_layers.py``, parametrised over the registry.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import robustsim
from robustsim.attacks.adapters import AutoAttack
from robustsim.attacks.geometry import in_threat_model
from robustsim.attacks.registry import ATTACKS, make_attack
from robustsim.data import open_triplets
from robustsim.threat import ThreatModel
from robustsim.zoo import metric_entries

THREATS = {"l2": ThreatModel("l2", "ref", (0.25, 1.0)), "linf": ThreatModel("linf", "ref", (2 / 255, 8 / 255))}
NAMES = sorted(ATTACKS) + ["foolbox:L2PGD", "foolbox:LinfPGD"]


def _runs_for(name: str) -> list[str]:
    if name == "foolbox:L2PGD":
        return ["l2"]
    if name == "foolbox:LinfPGD":
        return ["linf"]
    return ["l2", "linf"]


@pytest.fixture(scope="module")
def data():
    return open_triplets("mini:test", limit=6)


@pytest.mark.parametrize("name,norm", [(n, norm) for n in NAMES for norm in _runs_for(n)])
def test_every_registered_attack_keeps_the_runner_contract(name, norm, data):
    """Built by name for a threat model; results for every triplet and radius; a triplet counts robust only if
    it was clean; the examples it shows lie in the ball and the box; the same seed gives the same result."""
    metric = robustsim.load_metric("l2")
    threat = THREATS[norm]
    runs = []
    for _ in range(2):
        attack = make_attack(name, threat, steps=3, seed=1)
        assert attack.norm == norm
        if name == "autoattack":  # the standard ensemble's Square keeps AutoAttack's 5000 queries (a minute here)
            assert attack.n_queries == 5000
            attack = AutoAttack(norm, steps=3, seed=1, n_queries=50)
        runs.append(attack(metric, data, threat, batch_size=4, progress=False, n_examples=3))
    res = runs[0]
    assert res.robust.shape == (2, len(data)) and res.clean.shape == (len(data),)
    assert not (res.robust & ~res.clean[None]).any()  # robust implies clean
    assert not (res.robust[1] & ~res.robust[0]).any()  # nested balls
    assert res.calls > 0 and math.isfinite(res.seconds)
    adv, ref = res.examples["adv"], res.examples["ref"]
    for i, e in enumerate(threat.eps):
        assert in_threat_model(adv[i], ref, e, norm).all()
    assert torch.equal(runs[0].robust, runs[1].robust) and torch.equal(runs[0].examples["adv"], runs[1].examples["adv"])


def test_an_attack_refuses_a_threat_model_of_another_norm(data):
    attack = make_attack("pgd", "l2")
    with pytest.raises(robustsim.InputError, match="linf"):
        attack(robustsim.load_metric("l2"), data, THREATS["linf"], progress=False)


SLOW = ("effnet", "dinov2")  # pretrained CNN / ViT forwards at 96-224 px: minutes on 2 cores together
RUNNABLE = [
    pytest.param(e.name, marks=pytest.mark.slow) if e.name.startswith(SLOW) else e.name
    for e in metric_entries()
    if e.weights_available()
]


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_zoo_metric_that_can_run_here_speaks_the_protocol(name):
    """(B,) finite non-negative distances, d(x, x) ~ 0, a larger change a larger distance on average, float64 input
    gives the float32 distances, and for embedding metrics (B, D) embeddings consistent with the distance."""
    metric = robustsim.load_metric(name)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    near = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    far = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        d_near, d_far, d_same = metric(x, near), metric(x, far), metric(x, x)
    assert d_near.shape == (2,) and torch.isfinite(d_near).all() and (d_near >= 0).all()
    assert float(d_same.abs().max()) < 1e-4 and float(d_far.mean()) > float(d_near.mean())
    with torch.no_grad():
        assert torch.allclose(metric(x.double(), far.double()), d_far, atol=1e-6)
    if isinstance(metric, robustsim.EmbeddingMetric):
        with torch.no_grad():
            ex, ey = metric.embed(x), metric.embed(far)
        assert ex.dim() == 2 and ex.shape[0] == 2
        assert torch.allclose(metric.embedding_distance(ex, ey), d_far, atol=1e-4)


class _Opened(Exception):
    pass


@pytest.mark.parametrize("entry", [e for e in metric_entries() if e.all_files()], ids=lambda e: e.name)
def test_every_zoo_row_declares_the_weight_files_its_build_opens(entry, monkeypatch, tmp_path):
    """The build resolves weight files only through the manager, and only the files its row declares, so
    ``robustsim weights fetch <metric>`` (which fetches the row's files) brings everything it needs."""
    if entry.missing_packages():
        pytest.skip(f"{entry.name} needs {entry.missing_packages()[0]}")
    import robustsim.weights as weights

    opened: list[str] = []

    def record(name: str, fetch: bool = True, progress: bool = True) -> Path:
        opened.append(name)
        path = tmp_path / name  # a placeholder: the build fails reading it, after resolving what it resolves first
        path.write_bytes(b"not weights")
        return path

    monkeypatch.setattr(weights, "resolve", record)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure reading the placeholders
        robustsim.load_metric(entry.name)
    assert opened, f"{entry.name} declares {entry.all_files()} but resolved none of them"
    assert set(opened) <= set(entry.all_files()), f"{entry.name} opened {opened}, declares {entry.all_files()}"
