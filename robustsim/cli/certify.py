"""``robustsim certify``: certified 2AFC accuracy of a 1-Lipschitz embedding metric."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from robustsim.cli.options import (
    allow_outside_option,
    batch_option,
    check_file_outputs,
    data_option,
    device_option,
    file_output_option,
    limit_option,
    load_metrics,
    open_data,
    parse_floats,
)
from robustsim.table import format_table, pct


@click.command("certify")
@click.option("--metric", required=True, help="A 1-Lipschitz metric: checkpoint folder or zoo name.")
@data_option
@click.option("--eps", "eps_text", default="36/255,72/255,108/255", show_default=True, help="l2 radii.")
@click.option(
    "--mode",
    type=click.Choice(["sound", "lipsim"]),
    default="sound",
    show_default=True,
    help="sound: no assumption on ||f(x)||; lipsim: the published formula (assumes ||f(x)|| >= 1).",
)
@file_output_option("--json", "Per-triplet radii and the curve.")
@file_output_option("--plot", "Certified accuracy vs epsilon (PNG/PDF).")
@batch_option
@device_option
@limit_option()
@allow_outside_option
def certify_cmd(
    metric: str,
    data_spec: str,
    eps_text: str,
    mode: str,
    json: Path | None,
    plot: Path | None,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
) -> None:
    """Certified 2AFC accuracy of a 1-Lipschitz embedding metric (LipSim) at each l2 epsilon.

    Only the reference image moves; images are loaded at the metric's input size so radii are in the
    pixel space the network sees. Metrics without a Lipschitz guarantee are refused (use `audit`).
    """
    from robustsim.certify import certify_2afc, require_lipschitz
    from robustsim.io import write_json

    eps = parse_floats(eps_text, "--eps")
    check_file_outputs(json=json, plot=plot)
    (m,) = load_metrics([metric], device)
    require_lipschitz(m)
    data = open_data(data_spec, limit, size=m.input_size, allow_outside=allow_outside)
    res = certify_2afc(m, data, eps, mode=mode, batch_size=batch_size, device=device)  # type: ignore[arg-type]
    rows = [(f"{e:.4g} ({e * 255:.0f}/255)", pct(res.clean_score), pct(res.certified_at(e))) for e in eps]
    click.echo(f"certified 2AFC (%) of {m.name} on {data.name} (mode={mode}, L={res.lipschitz:g}, n={len(res.p)})")
    click.echo(format_table(["eps (l2)", "clean", "certified"], rows))
    click.echo(f"median certified radius: {float(res.radius.median()):.4f}")
    if json:
        write_json(json, res.to_json())
        click.echo(f"wrote {json}")
    if plot:
        from robustsim.plots import Curve, accuracy_figure, save_figure

        fig = accuracy_figure(
            [
                Curve("clean", eps, [res.clean_score] * len(eps), "--"),
                Curve(f"certified ({mode})", eps, [res.certified_at(e) for e in eps]),
            ],
            "l2",
            f"{m.name} on {data.name}",
        )
        save_figure(fig, plot)
        click.echo(f"wrote {plot}")
