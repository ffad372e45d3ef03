"""The cost a run states before it starts (robustsim/cost.py) and --dry-run, which stops there."""

from __future__ import annotations

import pytest
from conftest import run_cli

from robustsim.attacks import make_attack
from robustsim.cost import Estimate, audit_estimate, certify_estimate, duration
from robustsim.data import open_triplets
from robustsim.threat import ThreatModel
from robustsim.zoo import load_metric


def test_an_audit_counts_every_step_of_every_attack_radius_and_triplet():
    metric, data = load_metric("lipsim-nano"), open_triplets("mini:test", limit=12)
    threat = ThreatModel("l2", "ref", (0.5, 1.0))
    attacks = [make_attack(a, threat, steps=10) for a in ("apgd-ce", "apgd-margin")]
    est = audit_estimate(metric, data, threat, attacks, 32, "cpu")
    # per attack: the fixed embeddings and the clean check, then per radius a verification and 10 steps
    assert est.forwards == 12 * 2 * (2 + 2) + 2 * 12  # + the certificate's two passes (lipsim-nano has one)
    assert est.backwards == 12 * 2 * 2 * 10
    assert est.seconds > 0 and est.unit == "triplet" and est.trial is None  # 12 triplets: counted, no trial
    many = audit_estimate(metric, open_triplets("mini:test", limit=40), threat, attacks, 32, "cpu")
    assert many.trial == (4, 40) and many.forwards == 40 * 2 * (2 + 2) + 2 * 40 and many.seconds > 0
    eot = audit_estimate(metric, data, threat, [make_attack("pgd", threat, steps=10, eot=3)], 32, "cpu")
    assert eot.backwards == 12 * 2 * 30
    smooth = certify_estimate(load_metric("ssim"), data, "smoothing", 8, "cpu", samples=100)
    assert smooth.forwards == 1200 and smooth.backwards == 0 and smooth.unit == "noisy image"
    both = est + smooth
    assert both.forwards == est.forwards + 1200 and both.unit == "triplet or noisy image"


def test_a_long_cpu_run_says_so_and_suggests_a_subset_or_a_gpu():
    long = Estimate(1e6, 1e7, 7200.0, "cpu")
    assert "2.0 h" in long.describe() and "--limit" in (long.warning() or "")
    assert Estimate(1e6, 1e7, 7200.0, "cuda:0").warning() is None
    assert Estimate(10, 10, 50.0, "cpu").warning() is None
    assert [duration(s) for s in (45, 600, 3 * 3600, 5 * 86400)] == ["45 s", "10 min", "3.0 h", "5.0 days"]


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "--metric", "lipsim-nano", "--data", "mini", "--limit", "8", "--steps", "5"],
        ["certify", "--metric", "ssim", "--data", "mini", "--limit", "4", "--method", "smoothing", "--n", "64"],
        ["certify", "--metric", "ssim", "--data", "mini", "--limit", "2", "--method", "center-smoothing"],
    ],
)
def test_dry_run_prints_the_estimate_and_writes_nothing(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli([*argv, "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "estimated cost: about" in captured.err and "at most" in captured.err and not out.exists()
    assert "2AFC" not in captured.out  # no result table: the work did not run


def test_bench_dry_run_estimates_each_metric_and_their_sum(tmp_path, capsys):
    out = tmp_path / "bench"
    assert run_cli(["bench", "--metrics", "l2,lipsim-nano", "--limit", "8", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[0] for ln in lines if "estimated cost" in ln] == ["l2", "lipsim-nano", "all metrics"]
    assert not out.exists()


def test_a_bench_estimates_only_the_cells_it_has_not_saved(tmp_path, capsys):
    """A rerun whose cells are all saved has nothing to estimate; a new --smoothing adds only
    the certificate cells (its attacks are saved)."""
    out = tmp_path / "bench"
    assert run_cli(["bench", "--metrics", "l2", "--limit", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert run_cli(["bench", "--metrics", "l2", "--limit", "8", "--out", str(out), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "l2: every cell saved: nothing to compute" in err and "estimated cost" not in err
    argv = ["bench", "--metrics", "l2", "--limit", "8", "--smoothing", "0.25", "--out", str(out), "--dry-run"]
    assert run_cli(argv) == 0
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("l2: estimated cost"))
    assert "timed on one batch" in line and "0 forward+backwards" in line  # no attack left to run
