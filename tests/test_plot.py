"""`robustsim plot` overlays reports: one labelled curve per report, checked through matplotlib's objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

from robustsim.overlay import infer_kind, load_report, overlay_figure


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("audits")
    for metric in ("l2", "ssim"):
        argv = ["audit", "--metric", metric, "--data", "mini", "--limit", "12", "--steps", "3",
                "--attacks", "pgd", "--eps", "0.5,1", "--out", str(root / metric), "--device", "cpu"]  # fmt: skip
        assert run_cli(argv) == 0
    return root


def test_plot_two_audit_reports_draws_two_labelled_curves(audits, tmp_path):
    out = tmp_path / "robust.png"
    reports = [str(audits / "l2"), str(audits / "ssim" / "report.json")]
    assert run_cli(["plot", *reports, "--kind", "robust", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
    fig = overlay_figure([load_report(audits / "l2"), load_report(audits / "ssim")], "robust")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["l2 (mini:test)", "ssim (mini:test)"]
    assert ax.get_xlabel() == "epsilon (l2)" and "%" in ax.get_ylabel()
    robust = load_report(audits / "l2")["robust"]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([100 * v for v in robust])


def test_plot_errors_exit_2(audits, tmp_path, capsys):
    for argv, words in [
        (["plot", str(audits / "l2"), "--kind", "certified", "--out", str(tmp_path / "c.png")], "no certificate"),
        (["plot", str(tmp_path), "--out", str(tmp_path / "x.png")], "holds no report.json"),
    ]:
        assert run_cli(argv) == 2 and words in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reports")
    out = {"audit": base / "audit", "certify": base / "certify.json", "retrieval": base / "retrieval"}
    assert (
        run_cli(["audit", "--metric", "lipsim-nano", "--limit", "8", "--steps", "2", "--out", str(out["audit"])]) == 0
    )
    assert run_cli(["certify", "--metric", "lipsim-nano", "--limit", "8", "--json", str(out["certify"])]) == 0
    assert (
        run_cli(
            [
                "retrieval",
                "--metric",
                "l2",
                "--limit",
                "4",
                "--steps",
                "2",
                "--k",
                "1,5",
                "--out",
                str(out["retrieval"]),
            ]
        )
        == 0
    )
    return out


def test_plot_infers_its_kind_from_the_reports(reports, tmp_path):
    audit, certify, retrieval = (load_report(reports[k]) for k in ("audit", "certify", "retrieval"))
    assert infer_kind([audit]) == "robust" and infer_kind([certify]) == "certified"
    assert infer_kind([retrieval]) == "robust" and infer_kind([audit, certify]) == "robust"
    fig = overlay_figure([retrieval])
    (line,) = fig.axes[0].get_lines()
    assert line.get_xdata()[0] == 0.0 and "recall@1" in fig.axes[0].get_ylabel()
    for sources, name in (
        ([reports["audit"]], "a.png"),
        ([reports["certify"]], "c.png"),
        ([reports["retrieval"]], "r.png"),
    ):
        assert run_cli(["plot", *map(str, sources), "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 1000


def test_every_report_uses_the_same_schema_key(reports):
    for path in (reports["audit"] / "report.json", reports["certify"], reports["retrieval"] / "report.json"):
        report = json.loads(path.read_text())
        assert report["version"] >= 1 and "schema" not in report and report["runtime"]["threads"] >= 1


# issue 29 item 1: figures that show what they hold ---------------------------------------------------------


def _series_distinct(ax) -> None:
    """No two lines with the same data look alike (marker, line style, width and size all equal)."""
    lines = ax.get_lines()
    for i, a in enumerate(lines):
        for b in lines[i + 1 :]:
            if list(a.get_xdata()) == list(b.get_xdata()) and list(a.get_ydata()) == list(b.get_ydata()):
                look = lambda ln: (ln.get_marker(), ln.get_linestyle(), ln.get_linewidth(), ln.get_markersize())  # noqa: E731
                assert look(a) != look(b), (a.get_label(), b.get_label())


def _legend_outside_the_data(fig, ax) -> None:
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_the_audit_figures_show_every_series_and_label_every_example():
    import robustsim
    from robustsim.audit import run_audit
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel

    metric, data = robustsim.load_metric("lipsim-nano"), open_triplets("mini:test", limit=8)
    report = run_audit(
        metric, data, ThreatModel("l2", "ref", (0.5, 2.0)), ["apgd-ce", "apgd-margin"], steps=5, progress=False
    )
    figs = report.figures()
    ax = figs["robust.png"].axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert any("same as" in lb for lb in labels)  # apgd-ce equals the worst case here: the legend says so
    _series_distinct(ax)
    _legend_outside_the_data(figs["robust.png"], ax)
    titles = [a.get_title() for a in figs["examples.png"].axes if a.get_title()]
    assert any(t.lstrip("ref\n").startswith("#") and "d0" in t and "d1" in t for t in titles)
    assert any("|delta|" in t for t in titles)
    flips = report.examples["flipped"]
    assert flips.any() == any("FLIPPED" in t for t in titles)


def test_overlapping_recall_lines_and_a_ninth_leaderboard_metric_stay_visible(tmp_path):
    """recall@k's three certified lines at 0 (drawn by accuracy_figure, as recall.png is) and a 9-metric
    leaderboard (past the 8-colour palette) give every series its own look; legends sit outside the data."""
    from robustsim.bench.cards import Row, _figure, columns
    from robustsim.bench.protocol import get_protocol
    from robustsim.plots import Curve, accuracy_figure

    eps = [0.0, 0.5, 1.0]
    curves = [Curve(f"recall@{k} certified", eps, [0.0, 0.0, 0.0], ":", c) for c, k in enumerate((1, 5, 10))]
    curves += [Curve(f"recall@{k} clean", eps, [0.5 + 0.1 * c] * 3, "--", c) for c, k in enumerate((1, 5, 10))]
    fig = accuracy_figure(curves, "l2", "recall")
    _series_distinct(fig.axes[0])
    _legend_outside_the_data(fig, fig.axes[0])
    proto = get_protocol("quick")
    titles = [c.title for c in columns(proto)]
    rows = [Row(f"m{i}", {t: 0.5 + 0.01 * i for t in titles}, 1, 1.0) for i in range(9)]
    board = _figure(rows, columns(proto), proto)
    ax = board.axes[0]
    looks = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes()) for c in ax.collections}
    assert len(looks) == 9  # the 9th metric is not the 1st's blue dot
    _legend_outside_the_data(board, ax)
