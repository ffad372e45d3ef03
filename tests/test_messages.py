"""What users read: errors in one line that name the fix, warnings only where a radius
really looks written for the other norm, percentages without float noise, training output in the field's units."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from torch import nn

import robustsim
from robustsim.errors import RobustsimError


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_ensemble_of_metrics_without_embeddings_is_one_line_naming_the_alternative(capsys):
    assert run_cli(["score", "--metric", "l2+ssim", "--data", "mini", "--limit", "2"]) == 2
    err = _one_line(capsys)
    assert "'l2' has no embed()" in err and "PerceptualLoss" in err
    with pytest.raises(robustsim.InputError, match="only embedding metrics combine"):
        robustsim.EnsembleMetric([robustsim.load_metric("l2"), robustsim.load_metric("ssim")])


def test_center_smoothing_takes_one_radius_as_the_docs_write_it():
    from robustsim.certify import CenterSmoothing

    x = robustsim.data.open_triplets("mini:test", limit=2)[0]["ref"][None]
    smoothing = CenterSmoothing(robustsim.load_metric("l2"), 0.1, n=200, n_center=1000)
    one, listed = smoothing.certify(x, 0.1), smoothing.certify(x, [0.1])
    assert one["bound"].shape == (1, 1) and torch.equal(one["bound"], listed["bound"])
    with pytest.raises(robustsim.InputError, match="radii are finite numbers"):
        smoothing.certify(x, -0.1)


def test_a_network_without_a_bound_names_the_module_that_blocks_it_and_no_cli_command_for_it():
    from robustsim.certify import certify_2afc

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Softmax(dim=1), nn.Flatten())
    metric = robustsim.EmbeddingMetric(net, input_size=32, name="mynet").eval()
    data = robustsim.data.open_triplets("mini:test", limit=2)
    with pytest.raises(RobustsimError) as info:
        certify_2afc(metric, data, [0.1], progress=False)
    message = str(info.value)
    assert "net.2: F.softmax has no Lipschitz rule" in message and "\n" not in message
    assert "--metric mynet" not in message and "certify_smoothed" in message


def test_only_radii_that_look_written_for_linf_warn():
    """certify.md's center-smoothing example (0.02, 0.05, 0.1) is quiet; the linf radii papers use, as fractions
    or to three decimals, warn."""
    quiet = [(0.02, 0.05, 0.1), (36 / 255, 0.5), (0.25,), (0.01, 0.03)]
    loud = [(8 / 255,), (0.031,), (4 / 255, 0.5), (0.016,), (1 / 255,), (16 / 255,)]
    assert all(robustsim.ThreatModel("l2", "ref", e).implausible() is None for e in quiet)
    assert all("did you mean --norm linf?" in robustsim.ThreatModel("l2", "ref", e).implausible() for e in loud)
    assert robustsim.ThreatModel("linf", "ref", (8 / 255,)).implausible() is None


def test_report_rows_are_percentages_without_float_noise():
    from robustsim.certify import certify_2afc

    metric = robustsim.load_metric("lipsim-nano")
    data = robustsim.data.open_triplets("mini:test", limit=20)  # fractions k/20: 100 * 0.55 is 55.00000000000001
    rows = certify_2afc(metric, data, [36 / 255, 72 / 255], progress=False).rows()
    for row in rows:
        for key in ("clean", "certified"):
            assert row[key] == round(row[key], 6), row  # 55.0, never 55.00000000000001


def test_a_run_s_best_and_last_checkpoints_load_under_their_own_names(tmp_path):
    from robustsim.train.finetune import certified_key
    from robustsim.train.recipes import summary_line

    argv = ["train", "distill", "--teacher", "effnet-lite0", "--student", "nano", "--input-size", "32"]
    argv += ["--limit", "32", "--max-steps", "2", "--batch-size", "16", "--eval-data", "mini:val", "--out"]
    assert run_cli([*argv, str(tmp_path / "b")]) == 0
    names = {which: robustsim.load_metric(str(tmp_path / "b" / which)).name for which in ("best", "last")}
    assert names == {"best": "b-best", "last": "b-last"}
    assert certified_key(36 / 255) == "certified@36/255"
    line = summary_line({"data": "mini:val", "clean": 0.5, certified_key(36 / 255): 0.25, "seconds": 3})
    assert "36/255: 25.0" in line and "0.1412" not in line


def test_an_audit_shows_the_score_robustsim_score_prints_and_says_how_its_accuracy_differs(capsys):
    """One l2 on mini read 72.3 in `audit` and 72.4 in `score`; the audit now prints the score's
    number beside its accuracy and says why the two may differ (exact ties, soft labels)."""
    from robustsim.audit import run_audit
    from robustsim.score2afc import evaluate_2afc

    data = robustsim.data.open_triplets("mini:test", limit=60)
    metric = robustsim.load_metric("l2")
    threat = robustsim.ThreatModel("l2", "ref", (0.5,))
    report = run_audit(metric, data, threat, ["apgd-ce"], steps=2, progress=False)
    scored = evaluate_2afc(metric, data, progress=False)  # the same batches in this process: the same kernels
    assert report.score == scored.score
    assert f"counts a tie 1/2: {100 * scored.score:.1f} on these triplets" in report.table()
    # the CLI is another run (its own thread count): it may decide a near-tie the other way, each moving the score
    # by at most 1/60; a near-tie is a gap within float32 rounding of the distances
    near = int(((scored.d0 - scored.d1).abs() <= 1e-5 * (scored.d0 + scored.d1)).sum())
    assert run_cli(["score", "--metric", "l2", "--data", "mini:test", "--limit", "60"]) == 0
    row = next(ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("l2 "))
    assert abs(float(row[1]) - 100 * scored.score) <= 0.05 + 100 * near / 60
    decided = [
        c for c, p in zip(report.per_triplet["clean"], (data[i]["p"] for i in range(60)), strict=True) if p != 0.5
    ]
    assert report.clean == pytest.approx(sum(decided) / len(decided))  # the accuracy is what the footer says
    assert report.to_json()["score"] == report.score
