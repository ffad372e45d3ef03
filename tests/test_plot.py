"""`robustsim plot` overlays reports: one labelled curve per report, checked through matplotlib's objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

from robustsim.errors import RobustsimError
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
    out |= {"smoothing": base / "smoothing.json", "center": base / "center.json"}
    small = ["--metric", "l2", "--limit", "4", "--sigma", "0.25"]
    assert (
        run_cli(["certify", "--method", "smoothing", *small, "--n", "20", "--n0", "8", "--json", str(out["smoothing"])])
        == 0
    )
    center = ["--method", "center-smoothing", *small, "--eps", "0.05,0.1", "--n", "200", "--n-center", "1000"]
    assert run_cli(["certify", *center, "--json", str(out["center"])]) == 0
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


# figures that show what they hold ---------------------------------------------------------


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
    """Recall@k's three certified lines at 0 (drawn by accuracy_figure, as recall.png is) and a 9-metric
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


def test_plot_reads_every_report_kind_robustsim_writes_and_names_each_certificate(reports, tmp_path):
    """An audit, a Lipschitz certificate, a smoothing certificate, center smoothing and retrieval
    each plot; a legend never holds two kinds of certificate unnamed."""
    for kind, path in reports.items():
        out = tmp_path / f"{kind}.png"
        assert run_cli(["plot", str(path), "--out", str(out)]) == 0, kind
        with Image.open(out) as im:
            assert im.size[0] > 300, kind
    lipschitz, smoothed = load_report(reports["certify"]), load_report(reports["smoothing"])
    fig = overlay_figure([lipschitz, smoothed], "certified")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].endswith("Lipschitz") and "smoothed, sigma 0.25, n 20" in labels[1], labels
    center = load_report(reports["center"])
    fig = overlay_figure([center])
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == pytest.approx(center["median_bound"]) and ax.get_ylim()[0] == 0
    assert "center smoothing, sigma 0.25" in ax.get_legend().get_texts()[0].get_text()
    assert "median bound" in ax.get_ylabel()
    with pytest.raises(RobustsimError, match="cannot share a figure"):
        overlay_figure([center, lipschitz])


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a hex colour."""
    from matplotlib.colors import to_rgb

    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_every_series_colour_reads_on_white_with_a_contrast_of_3_to_1(reports):
    """WCAG's contrast ratio (L1 + 0.05) / (L2 + 0.05) of every palette colour against the white
    background, and of every line an audit's and a certify report's figures draw."""
    from matplotlib.colors import to_hex

    from robustsim.plots import PALETTE, series_style

    contrast = lambda c: (1.05) / (_luminance(c) + 0.05)  # noqa: E731
    assert all(contrast(c) >= 3 for c in PALETTE), {c: round(contrast(c), 2) for c in PALETTE}
    assert len({series_style(i) for i in range(64)}) == 64
    figures = [overlay_figure([load_report(reports[k])]) for k in ("audit", "certify", "center")]
    for fig in figures:
        for line in fig.axes[0].get_lines():
            assert contrast(to_hex(line.get_color())) >= 3, line.get_label()


def test_examples_show_the_flipped_triplets_first_with_their_label_and_one_image_per_radius():
    """Examples.png picks the triplets the audit flipped (at the smallest radius first), shows the
    human label p, and each radius's column is an attack at that radius (within it, never a copy of another)."""
    import torch

    import robustsim
    from robustsim.audit import N_EXAMPLES, run_audit
    from robustsim.data import open_triplets
    from robustsim.threat import ThreatModel

    data = open_triplets("mini:test", limit=24)
    threat = ThreatModel("l2", "ref", (0.1, 0.3, 1.0))
    report = run_audit(robustsim.load_metric("lipsim-nano"), data, threat, ["apgd-ce"], steps=10, progress=False)
    clean, robust = report.per_triplet["clean"], report.per_triplet["robust"]
    first_flip = [next((k for k in range(3) if clean[i] and not robust[k][i]), 3) for i in range(len(data))]
    ex = report.examples
    shown = [int(i) for i in ex["index"]]
    flipped = sorted(first_flip[i] for i in range(len(data)) if first_flip[i] < 3)
    assert len(shown) == N_EXAMPLES and flipped, "the audit flips some triplets at these radii"
    assert [first_flip[i] for i in shown][: len(flipped)] == flipped[:N_EXAMPLES]  # flipped first, smallest radius
    assert ex["p"].tolist() == [float(data[i]["p"]) for i in shown]
    for k, eps in enumerate(threat.eps):
        moved = (ex["adv"][k] - ex["ref"]).flatten(1).norm(dim=1)
        assert (moved <= eps * (1 + 1e-4)).all() and torch.allclose(moved, ex["norm"][k].float(), atol=1e-4)
        if k:
            assert not any(torch.equal(ex["adv"][k][i], ex["adv"][k - 1][i]) for i in range(N_EXAMPLES))
    titles = [a.get_title() for a in report.figures()["examples.png"].axes if a.get_title()]
    assert sum("p=" in t for t in titles) == N_EXAMPLES
    assert sum("FLIPPED" in t for t in titles) == int(ex["flipped"].sum())
