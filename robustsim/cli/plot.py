"""``robustsim plot``: overlay audit / certify / retrieval reports in one figure."""

from __future__ import annotations

from pathlib import Path

import click

from robustsim.cli.options import check_file_outputs


@click.command("plot")
@click.argument("reports", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["certified", "robust", "radius"]), default="certified", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Figure file (.png or .pdf).")
def plot_cmd(reports: tuple[str, ...], kind: str, out: Path) -> None:
    """Overlay audit / certify reports (folders or JSON files): one curve per metric.

    certified / robust: accuracy vs epsilon (l2, or linf in /255); radius: histogram of certified radii.
    """
    from robustsim.overlay import load_report, overlay_figure
    from robustsim.plots import save_figure

    check_file_outputs(out=out)
    fig = overlay_figure([load_report(p) for p in reports], kind)  # type: ignore[arg-type]
    save_figure(fig, out)
    click.echo(f"wrote {out}")
