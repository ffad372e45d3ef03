"""Attacks: exact robust accuracy for the pixel l2 metric, ball/box constraints, laws, adapters."""

import json
import re

import pytest
import torch
from conftest import L2_EPS, LINF_EPS, exact_min_distance, run_cli, subset
from hypothesis import given, settings
from hypothesis import strategies as st

import robustsim
from robustsim.attacks import (
    APGD,
    PGD,
    apgd,
    embedding_attack,
    norms,
    pgd,
)
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin
from robustsim.audit import AttackSummary, AuditLawError, AuditReport, check_laws, run_audit
from robustsim.data.triplets import ArrayTriplets
from robustsim.threat import ThreatModel


@pytest.mark.parametrize("norm, eps", [("l2", L2_EPS), ("linf", LINF_EPS)])
def test_pgd_and_apgd_reach_the_exact_robust_accuracy_of_l2(mini200, norm, eps):
    metric = robustsim.load_metric("l2")
    batch = {k: torch.stack([mini200[i][k] for i in range(len(mini200))]) for k in ("ref", "x0", "x1", "p")}
    y, _ = labels_from_p(batch["p"])
    clf = TwoAFCClassifier(metric, batch["ref"], batch["x0"], batch["x1"])
    with torch.no_grad():
        correct = margin(clf(batch["ref"]), y) > 0
    dist = exact_min_distance(batch["ref"], batch["x0"], batch["x1"], y, norm)
    exact = [float((correct & (dist > e)).double().mean()) for e in eps]
    for attack in (PGD(norm, steps=100), APGD(norm, loss="ce", steps=100), APGD(norm, loss="margin", steps=100)):
        res = attack(metric, mini200, eps, batch_size=100, progress=False)
        assert res.clean_accuracy == pytest.approx(float(correct.double().mean()))
        for got, want in zip(res.robust_accuracy(), exact, strict=True):
            assert got >= want - 1e-9, f"{attack.name} went below the exact robust accuracy: left the ball or box"
            assert got <= want + 0.01, f"{attack.name} is weaker than the exact attack: {got} vs {want}"


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(1e-3, 2.0),
    norm=st.sampled_from(["l2", "linf"]),
    which=st.sampled_from(["pgd", "apgd"]),
)
def test_every_iterate_respects_ball_and_box(seed, eps, norm, which):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box
    x[1] = 1.0
    direction = torch.randn(3, 8, 8, generator=g)
    seen = []

    def objective(xa, rows):
        seen.append((xa.detach().clone(), rows.clone()))
        loss = (xa * direction).flatten(1).sum(1) + xa.pow(3).flatten(1).sum(1)
        return loss, torch.zeros_like(loss, dtype=torch.bool)

    eps_t = torch.full((6,), eps)
    run = pgd if which == "pgd" else apgd
    x_adv, _ = run(objective, x, eps_t, norm, steps=10, generator=g)
    for xa, rows in [*seen, (x_adv, torch.arange(6))]:
        assert torch.all(norms(xa - x[rows], norm) <= eps * (1 + 1e-5) + 1e-6)
        assert xa.min() >= 0 and xa.max() <= 1


def test_runner_rejects_claims_outside_the_ball(mini200):
    class Cheater(PGD):
        def run(self, forward, x, y, eps, generator):  # "breaks" everything by leaving the ball
            return (1 - x), torch.ones(x.shape[0], dtype=torch.bool)

    res = Cheater("l2")(robustsim.load_metric("l2"), subset(mini200, 20), [0.1], progress=False)
    assert res.robust_accuracy()[0] == res.clean_accuracy


def test_adding_attacks_never_raises_robust_accuracy(mini200):
    metric = robustsim.load_metric("ssim")
    data = subset(mini200, 60)
    threat = ThreatModel("linf", "ref", tuple(LINF_EPS))
    one = run_audit(metric, data, threat, ["pgd"], steps=10, progress=False)
    two = run_audit(metric, data, threat, ["pgd", "apgd-margin"], steps=10, progress=False)
    assert all(b <= a for a, b in zip(one.robust, two.robust, strict=True))
    assert all(r <= two.clean for r in two.robust)
    assert two.to_json()["version"] == 2 and two.certified is None
    assert all(b <= a for a, b in zip(two.robust, two.robust[1:], strict=False))


def _exact_robust_moving_one(ref, x0, x1, y, target: str, eps: float) -> torch.Tensor:
    """(B,) robust under the l2 pixel metric when one distorted image moves in a linf ball of ``eps`` (and the
    box): per pixel, the attacker moves it as far from (or as close to) the reference as the ball allows."""
    moving, fixed = (x0, x1) if target == "x0" else (x1, x0)
    lo, hi = (moving - eps).clamp(0, 1), (moving + eps).clamp(0, 1)
    near = ref.clamp(lo, hi)  # the closest the moving image can get to ref
    far = torch.where((ref - lo).abs() > (ref - hi).abs(), lo, hi)  # the farthest
    d_fixed = ((ref - fixed) ** 2).flatten(1).mean(1)
    # the moving image is the right answer when (y == 1) == (target == "x1"): the attacker pushes it away
    right = (y == 1) == (target == "x1")
    d_moving = torch.where(right, ((ref - far) ** 2).flatten(1).mean(1), ((ref - near) ** 2).flatten(1).mean(1))
    return torch.where(right, d_moving < d_fixed, d_moving > d_fixed)


def test_other_targets_reach_the_exact_robust_accuracy_and_all_three_is_stronger(mini200):
    """Moving x0 or x1 of the l2 pixel metric has a closed-form worst case per pixel: PGD reaches it (up to one
    triplet of 40); moving all three images at once never leaves more triplets robust than moving one."""
    metric, data = robustsim.load_metric("l2"), subset(mini200, 40)
    b = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1", "p")}
    y, keep = labels_from_p(b["p"])
    res = {}
    for target in ("x0", "x1", "all"):
        res[target] = PGD("linf", steps=20)(metric, data, ThreatModel("linf", target, tuple(LINF_EPS)), progress=False)
        assert res[target].examples["adv"].shape[2] == (9 if target == "all" else 3)
    for target in ("x0", "x1"):
        for i, e in enumerate(LINF_EPS):
            exact = _exact_robust_moving_one(b["ref"], b["x0"], b["x1"], y, target, e) & keep
            found = res[target].robust[i]
            assert not (found & ~exact).any() or int((found & ~exact).sum()) <= 1  # PGD misses at most one break
            assert not (exact & ~found).any()  # and never reports a break that cannot exist
    for i in range(len(LINF_EPS)):
        assert not (res["all"].robust[i] & ~(res["x0"].robust[i] & res["x1"].robust[i])).any()


def test_ties_are_skipped_and_counted():
    imgs = torch.randint(0, 255, (4, 3, 3, 8, 8), dtype=torch.uint8).numpy()
    data = ArrayTriplets(imgs, torch.tensor([1.0, 0.5, 0.0, 0.5]).numpy(), "t")
    report = run_audit(
        robustsim.load_metric("l2"), data, ThreatModel("l2", "ref", (0.1,)), ["pgd"], steps=5, progress=False
    )
    assert report.n == 2 and report.skipped_ties == 2


def test_embedding_attack_reaches_the_l2_maximum():
    """For MSE, max d(x, x + delta) over the l2 ball is eps^2 / n when the box does not bind."""
    x = torch.full((3, 3, 8, 8), 0.5)
    eps = 0.5
    _, d = embedding_attack(robustsim.load_metric("l2"), x, eps, steps=50)
    assert torch.allclose(d, torch.full((3,), eps**2 / x[0].numel()), rtol=1e-3)


def test_check_laws_fails_loudly():
    def report(robust, certified, attack=None):
        return AuditReport(
            metric="m",
            data="d",
            threat=ThreatModel("l2", "ref", (0.1, 0.2)),
            n=10,
            skipped_ties=0,
            clean=0.8,
            robust=robust,
            certified=certified,
            attacks={"a": AttackSummary(attack or robust, 0.0, 0)},
            settings={},
            per_triplet={},
            seconds=0.0,
        )

    check_laws(report([0.6, 0.5], [0.5, 0.4]))
    with pytest.raises(AuditLawError, match="unsound"):
        check_laws(report([0.6, 0.5], [0.7, 0.4]))
    with pytest.raises(AuditLawError, match="> clean"):
        check_laws(report([0.9, 0.5], [0.5, 0.4]))
    with pytest.raises(AuditLawError, match="increases"):
        check_laws(report([0.5, 0.6], None))
    with pytest.raises(AuditLawError, match="above attack"):
        check_laws(report([0.6, 0.5], None, attack=[0.5, 0.5]))


def test_audit_cli(tmp_path, capsys):
    out = tmp_path / "audit"
    code = run_cli(
        [
            "audit",
            "--metric",
            "l2",
            "--data",
            "mini",
            "--limit",
            "20",
            "--steps",
            "5",
            "--attacks",
            "pgd,apgd-margin",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html", "robust.png", "examples.png"}
    text = capsys.readouterr().out
    assert "robust" in text and "apgd-margin" in text
    assert run_cli(["audit", "--metric", "l2", "--attacks", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_an_audit_stopped_with_ctrl_c_continues_where_it_stopped(tmp_path):
    """Ctrl-C on an audit threw every finished attack away. With --out, finished batches are kept
    (<out>/.resume); the same command continues from them and writes the report an uninterrupted run writes."""
    import signal
    import subprocess
    import sys
    import time

    def argv(out):
        return [
            sys.executable, "-m", "robustsim", "--threads", "1", "audit", "--metric", "lipsim-nano", "--data", "mini",
            "--limit", "48", "--batch-size", "8", "--steps", "5", "--attacks", "apgd-ce", "--eps", "0.5,1",
            "--out", str(out),
        ]  # fmt: skip

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    subprocess.run(argv(full), check=True, capture_output=True)
    # a pytest-xdist worker ignores SIGINT, and children inherit that: give the audit the default Ctrl-C back
    proc = subprocess.Popen(
        argv(stopped),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120

    def records():
        return [f for f in (stopped / ".resume").rglob("*.pt") if not f.name.startswith(".")]  # not a temp file

    while time.time() < deadline and len(records()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and not (stopped / "report.json").exists()
    kept = len(records())
    assert 2 <= kept < 6
    again = subprocess.run(argv(stopped), check=True, capture_output=True, text=True)
    # 6 batches at the first radius, then the survivors' batches at the second
    assert re.search(rf"audit: {kept} of \d+ batches restored", again.stderr), again.stderr
    a, b = (json.loads((d / "report.json").read_text()) for d in (full, stopped))
    assert a["per_triplet"] == b["per_triplet"] and a["robust"] == b["robust"] and a["clean"] == b["clean"]
    assert a["attacks"]["apgd-ce"]["calls"] == b["attacks"]["apgd-ce"]["calls"]
    assert not (stopped / ".resume").exists()


def test_the_clean_images_are_embedded_once_for_all_attacks_and_no_number_changes(monkeypatch):
    """An audit's attacks (and a bench's threat models) share one CleanEmbeddings, so the second
    attack embeds no clean image again; each attack's per-triplet results equal a run of that attack alone."""
    from conftest import small_embedding_metric

    from robustsim.attacks.twoafc import CleanEmbeddings

    metric = small_embedding_metric()  # no certificate: every embedded image is an attack's
    data = robustsim.data.open_triplets("mini:test", size=32, limit=24)
    threat = robustsim.ThreatModel("l2", "ref", (0.5, 1.0))
    seen = [0]
    embed = metric._embed

    def counting(x):
        seen[0] += x.shape[0]
        return embed(x)

    metric._embed = counting  # count the images the metric embeds (clean ones and attack steps alike)
    monkeypatch.setattr("robustsim.audit.example_info", lambda m, ex, t, d: ex)  # once per run: not an attack's
    monkeypatch.setattr("robustsim.audit.picked_examples", lambda *a: {})  # examples.png's own small attacks
    monkeypatch.setattr("robustsim.audit.evaluate_2afc", lambda *a, **k: None)  # the score's own forward pass
    both = run_audit(metric, data, threat, ["apgd-ce", "apgd-margin"], steps=5, progress=False)
    shared = seen[0]
    seen[0] = 0
    alone = [
        run_audit(metric, data, threat, [a], steps=5, progress=False, clean=CleanEmbeddings())
        for a in ("apgd-ce", "apgd-margin")
    ]
    separate = seen[0]
    assert both is not None and all(a is not None for a in alone)
    worst = [
        [min(x, y) for x, y in zip(r0, r1, strict=True)]
        for r0, r1 in zip(alone[0].per_triplet["robust"], alone[1].per_triplet["robust"], strict=True)
    ]
    assert both.per_triplet["robust"] == worst and both.clean == alone[0].clean
    assert separate - shared == 3 * len(data)  # ref, x0 and x1 of every triplet, once less


def test_the_survivors_of_a_larger_radius_are_not_embedded_again(monkeypatch):
    """The larger radii regather their survivors into new batches; their clean images were embedded in the first
    pass and are taken from there (kept per triplet): an audit of two attacks at three radii embeds each clean
    image once."""
    from conftest import small_embedding_metric

    import robustsim.attacks.twoafc as twoafc

    metric = small_embedding_metric()
    data = robustsim.data.open_triplets("mini:test", size=32, limit=24)
    images = [0]
    embed = twoafc.embed_clean

    def counting(m, x):
        images[0] += x.shape[0]
        return embed(m, x)

    monkeypatch.setattr(twoafc, "embed_clean", counting)
    monkeypatch.setattr("robustsim.audit.picked_examples", lambda *a: {})  # examples.png's own small attacks
    threat = robustsim.ThreatModel("l2", "ref", (0.25, 0.5, 1.0))
    report = run_audit(metric, data, threat, ["apgd-ce", "apgd-margin"], steps=5, batch_size=8, progress=False)
    assert report is not None and 0 < sum(report.per_triplet["robust"][1])  # larger radii had survivors to attack
    assert images[0] == 3 * len(data)


class _HostSyncs(torch.overrides.TorchFunctionMode):
    """Counts the tensor operations that make a GPU wait for the host: reading a value (item, bool, tolist),
    nonzero, and indexing or assigning with a boolean mask."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("item", "__bool__", "tolist", "nonzero", "argwhere", "masked_select"):
            self.count += 1
        elif name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            self.count += any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        return func(*args, **kwargs)


@pytest.mark.parametrize("attack", ["apgd", "pgd"])
def test_an_attack_step_synchronises_with_the_host_at_most_once(attack):
    """Masks stay on the device (torch.where, index_copy_); the one sync of a step is the
    nonzero that finds the rows still standing."""
    from robustsim.attacks.optim import apgd, pgd

    w = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    start = (x * w).flatten(1).sum(1)
    reach = torch.linspace(2, 30, 16)  # the ball moves the loss by ||w|| (~14): half the rows can get there

    def objective(xa, rows):
        loss = (xa * w[rows]).flatten(1).sum(1)
        return loss, loss > start[rows] + reach[rows]  # rows break at different steps: the batch shrinks

    steps = 30
    fn = apgd if attack == "apgd" else pgd
    with _HostSyncs() as mode:
        _, broken = fn(objective, x, torch.full((16,), 1.0), "l2", steps=steps, generator=torch.Generator())
    assert 0 < int(broken.sum()) < 16
    assert mode.count <= steps + 3, mode.count  # one a step, and the restart's rows


@pytest.mark.portable
def test_the_survivors_of_every_batch_are_attacked_together_at_each_larger_radius(monkeypatch):
    """At larger radii few triplets survive, and each batch's two or three ran alone. Each radius
    after the first is one pass over the triplets still robust (of every batch, in full batches), and every
    per-triplet result equals a run whose one batch holds them all (nothing to regather)."""
    import robustsim.attacks.sweep as sweep
    from robustsim.attacks import make_attack
    from robustsim.data import open_triplets
    from robustsim.zoo import load_metric

    passes: list[tuple[str, list[int]]] = []
    real = sweep.run_batches

    def recorded(data, step, **kw):
        passes.append((kw["desc"], [int(data[i]["index"]) for i in range(len(data))]))
        return real(data, step, **kw)

    monkeypatch.setattr(sweep, "run_batches", recorded)
    data = open_triplets("mini:test", size=16, limit=40)
    metric = load_metric("l2")
    eps = (0.25, 1.0, 2.0)
    attack = make_attack("apgd-ce", ThreatModel("l2", "ref", eps), steps=5)
    res = attack(metric, data, eps, batch_size=8, progress=False)
    assert res is not None
    robust = res.robust & res.clean[None]
    assert passes[0][1] == list(range(40))  # the first radius: every triplet
    for i, (desc, ids) in enumerate(passes[1:], start=1):  # then only those robust at the radius below
        assert f"eps {eps[i]:g}" in desc and ids == robust[i - 1].nonzero()[:, 0].tolist()
    assert 0 < len(passes[1][1]) < 40 and len(passes) == 3
    assert res.robust[1:].sum() < res.robust[:1].sum()  # the larger radii broke some of the survivors
    whole = attack(metric, data, eps, batch_size=40, progress=False)
    assert whole is not None
    # one batch of 40 runs other kernels than batches of 8 (another blocking of each reduction): the clean
    # decisions of the pixel metric are far from ties here, and each triplet's attack starts from the same noise,
    # so the outcomes agree up to a borderline triplet whose final margin a last-bit difference can tip
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1"))
    d0, d1 = metric(ref, x0), metric(ref, x1)
    clear = (d0 - d1).abs() > 1e-4 * (d0 + d1)  # float32 means of 768 squares: relative error << 1e-4
    assert torch.equal(whole.clean[clear], res.clean[clear]) and clear.sum() >= 38
    assert int((whole.robust != res.robust).sum()) <= 1


def test_an_attack_on_no_triplets_gives_empty_results():
    """A torchrun rank's share can be empty (fewer triplets than ranks): it must return empty rows, not fail before
    the gathers the other ranks wait in."""
    from robustsim.attacks import make_attack
    from robustsim.data import open_triplets
    from robustsim.zoo import load_metric

    none = open_triplets("mini:test", size=16, limit=4).select([])
    res = make_attack("apgd-ce", ThreatModel("l2", "ref", (0.5, 1.0)), steps=2)(load_metric("l2"), none, (0.5, 1.0))
    assert res is not None and res.robust.shape == (2, 0) and res.clean.shape == (0,) and res.n == 0
