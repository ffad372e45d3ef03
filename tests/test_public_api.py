"""Every public name robustsim exports (the ``__all__`` of the package and its subpackages) is exercised by the suite:
a function is called, a class instantiated, subclassed, raised or caught, a constant read. The scan reads the tests'
syntax trees, so a name exported tomorrow without a test fails here (``register_metric`` was broken for every name,
and no test called it). The names no other test reached are exercised below, each with a law."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch

PACKAGES = ["robustsim", "robustsim.attacks", "robustsim.certify", "robustsim.train", "robustsim.data",
            "robustsim.metrics", "robustsim.models", "robustsim.zoo", "robustsim.nn", "robustsim.bench",
            "robustsim.retrieval"]  # fmt: skip
TESTS = Path(__file__).resolve().parent


def _exercised() -> tuple[set[str], set[str]]:
    """(names called, instantiated, subclassed, raised or caught anywhere in tests/; names read at all)."""
    called, read = set(), set()

    def name_of(node: ast.AST) -> str | None:
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None

    for path in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called.add(name_of(node.func) or "")
                if name_of(node.func) in ("raises", "isinstance", "issubclass"):
                    called.update(name_of(a) or "" for a in ast.walk(node) if isinstance(a, (ast.Name, ast.Attribute)))
            elif isinstance(node, ast.ClassDef):
                called.update(name_of(b) or "" for b in node.bases)
            elif isinstance(node, ast.ExceptHandler) and node.type is not None:
                called.update(name_of(a) or "" for a in ast.walk(node.type))
            if isinstance(node, (ast.Name, ast.Attribute)):
                read.add(name_of(node) or "")
            elif isinstance(node, ast.alias):
                read.add((node.asname or node.name).rsplit(".", 1)[-1])
    return called, read


def test_every_exported_name_is_exercised_by_the_suite():
    called, read = _exercised()
    missing = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            used = name in called if callable(obj) else name in read
            if not used:
                missing.append(f"{package}.{name}")
    assert missing == [], f"exported but never exercised by a test: {missing}"
    assert sum(len(importlib.import_module(p).__all__) for p in PACKAGES) >= 130


# the names no other test reached ----------------------------------------------------------------------------------


def test_the_attack_registry_helpers():
    from robustsim.attacks import list_attacks, make_attack, project
    from robustsim.attacks.registry import ATTACKS

    assert list_attacks()[:-1] == sorted(ATTACKS) and {"pgd", "apgd-ce"} <= set(list_attacks())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    far = x + 3 * torch.randn(4, 3, 8, 8, generator=g)
    eps = torch.tensor([0.1, 0.5, 1.0, 2.0])
    for norm in ("l2", "linf"):
        p = project(far, x, eps, norm)
        size = (p - x).flatten(1).norm(dim=1) if norm == "l2" else (p - x).flatten(1).abs().amax(dim=1)
        assert (size <= eps * (1 + 1e-5)).all() and p.min() >= 0 and p.max() <= 1
        assert torch.allclose(project(p, x, eps, norm), p, atol=1e-6)  # a projection: idempotent
    assert make_attack("pgd", "l2").name == "pgd"


def test_attack_queries_stay_in_their_balls():
    from robustsim.attacks import attack_queries, make_attack
    from robustsim.attacks.retrieval import PushOut

    torch.manual_seed(0)
    q, gallery = torch.rand(2, 3, 16, 16), torch.randn(5, 8)
    emb = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    positives = torch.tensor([[True, False, False, False, False], [False, True, False, False, False]])
    goal = PushOut(lambda x: emb(x) @ gallery.T, positives, torch.zeros(2, 5, dtype=torch.bool), k=2)
    eps = [0.1, 0.5]
    out = attack_queries(make_attack("pgd", "l2", steps=3), goal, q, eps, torch.Generator().manual_seed(0))
    assert out.shape == (2, *q.shape)
    for k, e in enumerate(eps):
        assert ((out[k] - q).flatten(1).norm(dim=1) <= e * (1 + 1e-5)).all() and 0 <= out[k].min()


def test_has_certificate_and_the_preprocessing_constant():
    import robustsim
    from robustsim.certify import has_certificate, preprocess_lipschitz

    lipsim = robustsim.load_metric("lipsim-nano")
    assert has_certificate(lipsim) and not has_certificate(robustsim.load_metric("l2"))
    same = preprocess_lipschitz(lipsim, (lipsim.input_size, lipsim.input_size))
    assert same == pytest.approx(1.0, abs=1e-6)  # no resize at the network's own size: the identity (times 1/std)
    assert preprocess_lipschitz(lipsim, (2 * lipsim.input_size, 2 * lipsim.input_size)) > 0


def test_rounding_holds_its_bound():
    from robustsim.certify import Rounding

    r = Rounding(torch.tensor([1e-6, 2e-6]), sensitivity=1.0, kappa=0.0, unit=2**-24)
    assert r.delta.shape == (2,) and r.assumed == ()
    assert inspect.getdoc(Rounding)


def test_rmse_fit_and_the_training_tasks(tmp_path):
    """One optimiser step of each task through fit(): the checkpoints it promises are written."""
    import numpy as np
    from conftest import random_image, save_png

    from robustsim.data import open_images, open_triplets
    from robustsim.models import LipSimNet, LipSimPreset
    from robustsim.train import DistillTask, FinetuneTask, fit, rmse
    from robustsim.train.loop import RunConfig

    a, b = torch.zeros(3, 4), torch.ones(3, 4)
    assert float(rmse(a, b)) == pytest.approx(1.0) and float(rmse(a, a)) == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    for i in range(8):
        save_png(tmp_path / "imgs" / f"{i}.png", random_image(rng, 16))
    images = open_images(str(tmp_path / "imgs"), 16)
    net = LipSimNet(LipSimPreset(1, 4, 1, 16), embed_dim=8, input_size=16)
    task = DistillTask(images, rng.standard_normal((8, 8)).astype(np.float32), None, None, meta={})
    done = fit(net, task, RunConfig(out=str(tmp_path / "d"), epochs=1, batch_size=4, max_steps=1, progress=False))
    assert done["steps"] == 1 and (tmp_path / "d" / "last" / "config.json").is_file()
    data = open_triplets("mini:train", size=16, limit=8)
    tune = FinetuneTask(data, open_triplets("mini:val", size=16, limit=4), 0.5, "clean", 36 / 255, meta={})
    done = fit(net, tune, RunConfig(out=str(tmp_path / "f"), epochs=1, batch_size=4, max_steps=1, progress=False))
    assert done["steps"] == 1 and (tmp_path / "f" / "best" / "config.json").is_file()


def test_spec_registries_add_a_kind(tmp_path):
    from robustsim.data import (
        FileTriplets,
        TripletDataset,
        open_triplets,
        register_retrieval_spec,
        register_triplet_spec,
    )
    from robustsim.data.specs import RETRIEVAL_SPECS, TRIPLET_SPECS

    base = open_triplets("mini:test", limit=3)
    register_triplet_spec("first3", lambda rest, size=None, **_: open_triplets("mini:test", size=size, limit=3),
                          "first3", needs_rest=False)  # fmt: skip
    try:
        got = open_triplets("first3")
        assert isinstance(got, TripletDataset) and len(got) == 3 and got.identity == base.identity
    finally:
        TRIPLET_SPECS.pop("first3")
    register_retrieval_spec("none", lambda rest, size: None, "none", needs_rest=False)
    assert "none" in RETRIEVAL_SPECS
    RETRIEVAL_SPECS.pop("none")
    with pytest.raises(Exception, match="holds no triplets"):
        FileTriplets([], "empty")


def test_checkpoint_loaders_and_metrics_using(tmp_path):
    import robustsim
    from robustsim.models import load_checkpoint_metric
    from robustsim.zoo import metrics_using, register_checkpoint_loader, shipped_checkpoints
    from robustsim.zoo.registry import _CHECKPOINT_LOADERS

    shipped = next(p for p in shipped_checkpoints() if p.name == "lipsim-nano")
    assert load_checkpoint_metric(shipped) is not None and load_checkpoint_metric(tmp_path) is None
    marker = tmp_path / "x.const"
    marker.write_text("const")

    class Const(robustsim.Metric):
        def forward(self, x, y):
            return torch.zeros(x.shape[0])

    register_checkpoint_loader(lambda p: Const() if p.suffix == ".const" else None)
    try:
        assert isinstance(robustsim.load_metric(str(marker)), Const)
    finally:
        _CHECKPOINT_LOADERS.pop()
    assert "lpips-alex" in metrics_using("alexnet-owt-7be5be79.pth") and metrics_using("nope.bin") == []


def test_layer_kind_and_truncate():
    from robustsim.errors import InputError
    from robustsim.nn import LAYERS, Truncate, layer_kind

    assert all(layer_kind(k) == k for k in LAYERS)
    with pytest.raises(InputError):
        layer_kind("nope")
    x = torch.randn(2, 10)
    assert torch.equal(Truncate(4)(x), x[:, :4])


def test_the_result_and_protocol_types_are_what_the_calls_return(tmp_path):
    import robustsim
    from robustsim.attacks import Attack, AttackResult, make_attack
    from robustsim.bench import Protocol, get_protocol
    from robustsim.certify import CenterResult, CertifyResult, certify_2afc, certify_center
    from robustsim.data import open_triplets
    from robustsim.metrics import Metric
    from robustsim.retrieval import RetrievalResult, evaluate_retrieval
    from robustsim.zoo import MetricEntry, metric_entries

    l2, data = robustsim.load_metric("l2"), open_triplets("mini:test", limit=4)
    attack = make_attack("pgd", "l2", steps=2)
    assert isinstance(attack, Attack) and isinstance(l2, Metric)
    assert isinstance(attack(l2, data, [0.5], progress=False), AttackResult)
    assert isinstance(certify_2afc(robustsim.load_metric("lipsim-nano"), data, [36 / 255], progress=False),
                      CertifyResult)  # fmt: skip
    center = certify_center(l2, open_triplets("mini:test", limit=1), [0.05], 0.25, n=500, n_center=1500,
                            progress=False)  # fmt: skip
    assert isinstance(center, CenterResult)
    assert isinstance(get_protocol("quick"), Protocol) and all(isinstance(e, MetricEntry) for e in metric_entries())
    from PIL import Image

    for k, level in (("a", 0), ("b", 40), ("c", 200)):
        (tmp_path / "vsd" / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (level,) * 3).save(tmp_path / "vsd" / "images" / f"{k}.png")
    (tmp_path / "vsd" / "pairs.csv").write_text("query,candidate,label\na.png,b.png,1\na.png,c.png,0\n")
    from robustsim.data import open_retrieval

    res = evaluate_retrieval(l2, open_retrieval(f"vsd:{tmp_path / 'vsd'}"), ks=(1,), progress=False)
    assert isinstance(res, RetrievalResult)
