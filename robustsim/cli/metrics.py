"""``robustsim metrics``: the zoo, and whether each metric can run here."""

from __future__ import annotations

import shutil

import click

from robustsim.cli.options import say
from robustsim.table import format_table

STATES = (
    "built-in: weights ship with robustsim or a dependency; fetched: downloaded and verified; not downloaded: "
    "downloaded (pinned, verified) on first use, which needs the network (or `robustsim weights add` a copy); "
    "missing: offline, or no download location (`robustsim weights add`); needs X: pip install 'robustsim[zoo]' "
    "torch==2.13.0 torchvision==0.28.0"
)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 3)] + "..."


@click.command("metrics")
@click.option(
    "--width", type=click.IntRange(60, 400), default=None, help="Table width (default: the terminal's, at most 100)."
)
def metrics_cmd(width: int | None) -> None:
    """List the metric zoo and the state of each metric here.

    The metric zoo: each metric's state here (built-in, fetched, not downloaded, missing, or the package it
    needs) and what it is. `robustsim weights list` shows the weight files behind it."""
    from robustsim.zoo import metric_entries

    width = width or min(100, shutil.get_terminal_size((100, 24)).columns)
    entries = metric_entries()
    name_w = max(len(e.name) for e in entries)
    rows = [(e.name, e.state()) for e in entries]
    state_w = max(len(r[1]) for r in rows)
    desc_w = max(20, width - name_w - state_w - 4)
    table = [(n, s, _clip(e.description, desc_w)) for (n, s), e in zip(rows, entries, strict=True)]
    say(format_table(["metric", "state", "description"], table, left=True))
    say()
    for line in _wrap(STATES, width):
        say(line)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)
