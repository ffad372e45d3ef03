"""``robustsim plot``: overlay audit / certify / retrieval reports in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from robustsim.cli.options import UserPath, check_file_outputs, registry_choice, say

if TYPE_CHECKING:
    from robustsim.overlay import Kind


@click.command("plot")
@click.argument("reports", nargs=-1, required=True, type=UserPath())
@click.option(
    "--kind",
    type=registry_choice("robustsim.overlay", "KINDS"),
    default=None,
    help="certified / robust accuracy (or recall@k) vs epsilon, or a radius histogram. "
    "Default: certified for certify reports, robust otherwise.",
)
@click.option(
    "--out", required=True, default=None, type=UserPath(output=True), help="Figure file (.png, .pdf or .svg)."
)
def plot_cmd(reports: tuple[str, ...], kind: str | None, out: Path) -> None:
    """Overlay audit, certify or retrieval reports (folders or JSON files): one curve per report.

    certified / robust: accuracy vs epsilon (l2, or linf in /255); retrieval reports plot recall@k
    (the smallest k they share); radius: histogram of certified radii (certify reports).
    """
    from robustsim.overlay import FIGURE_SUFFIXES, load_report, overlay_figure
    from robustsim.plots import save_figure

    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise click.BadParameter(f"{out} needs a figure suffix ({', '.join(FIGURE_SUFFIXES)})", param_hint="--out")
    check_file_outputs(out=out)
    fig = overlay_figure([load_report(p) for p in reports], cast("Kind | None", kind))
    save_figure(fig, out)
    say(f"wrote {out}")
