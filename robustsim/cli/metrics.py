"""``robustsim metrics``: the zoo and whether each metric can run here."""

from __future__ import annotations

import click

from robustsim.table import format_table


@click.command("metrics")
def metrics_cmd() -> None:
    """List the metric zoo and whether each metric's weights are available offline."""
    from robustsim.metrics import metric_entries

    rows = [(e.name, "yes" if e.weights_available() else "no", e.description) for e in metric_entries()]
    click.echo(format_table(["metric", "weights", "description"], rows))
