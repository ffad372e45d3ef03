"""``robustsim demo``: what ``make demo`` runs, on the bundled offline data and metrics."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from robustsim.cli.audit import audit_cmd
from robustsim.cli.certify import certify_cmd
from robustsim.cli.options import device_option
from robustsim.cli.retrieval import retrieval_cmd
from robustsim.cli.score import score_cmd


@click.command("demo")
@device_option
@click.option("--quick", is_flag=True, help="Fewer triplets and steps (a smoke run).")
@click.pass_context
def demo_cmd(ctx: click.Context, device: torch.device, quick: bool) -> None:
    """What `make demo` runs: clean 2AFC of several metrics on the bundled `mini` set, certified
    accuracy of the shipped lipsim-nano, an audit of l2 and effnet-ensemble (l2 and linf, three
    epsilons each), then lipsim-nano's clean, attacked and certified recall on the bundled
    retrieval set. Reports go to runs/demo/ (replaced on every run)."""
    # ctx.invoke fills every option left out with its default (data mini, --eps per norm, APGD-CE and
    # APGD-margin for audits, APGD-CE and l2 0.5,1 for retrieval, ...); only the demo's own settings are here
    click.echo("== clean 2AFC on the bundled synthetic `mini` test split")
    ctx.invoke(
        score_cmd,
        metrics="l2,ssim,ms-ssim,effnet-lite0,effnet-ensemble,lipsim-nano",
        device=device,
        limit=64 if quick else None,
        groups=True,
    )
    click.echo("\n== certified 2AFC of the shipped 1-Lipschitz metric lipsim-nano (sound l2 radius)")
    ctx.invoke(certify_cmd, metric="lipsim-nano", batch_size=64, device=device, limit=64 if quick else None)
    for metric, limit, steps in (("l2", 600, 50), ("effnet-ensemble", 100, 10)):
        for norm in ("l2", "linf"):
            click.echo(f"\n== audit {metric}, {norm}")
            ctx.invoke(
                audit_cmd,
                metric=metric,
                norm=norm,
                steps=5 if quick else steps,
                out_dir=Path(f"runs/demo/{metric}-{norm}"),
                overwrite=True,
                batch_size=50,
                device=device,
                limit=16 if quick else limit,
            )
    click.echo("\n== retrieval with lipsim-nano on the bundled synthetic retrieval set (l2 attacks on the query)")
    ctx.invoke(
        retrieval_cmd,
        metric="lipsim-nano",
        steps=3 if quick else 20,
        out_dir=Path("runs/demo/retrieval-lipsim-nano"),
        overwrite=True,
        device=device,
        limit=8 if quick else None,
    )
