"""``robustsim demo``: what ``make demo`` runs, on the bundled offline data and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from robustsim.cli.bench import bench_cmd
from robustsim.cli.certify import certify_cmd
from robustsim.cli.options import device_option, say
from robustsim.cli.retrieval import retrieval_cmd
from robustsim.cli.score import score_cmd

if TYPE_CHECKING:
    import torch

# every offline metric, cheapest first (what --full scores and benchmarks); the default demo keeps the ones that
# run in seconds to a minute on a 2-core CPU, so it ends in a few minutes (the ViT and the ensemble take most)
OFFLINE = "l2,ssim,lipsim-nano-aoc,lipsim-nano-cert,lipsim-nano,ms-ssim,effnet-lite0,effnet-ensemble,dinov2-s14"
QUICK = "l2,ssim,lipsim-nano-aoc,lipsim-nano-cert,lipsim-nano,ms-ssim,effnet-lite0"
BENCHED = "l2,ssim,lipsim-nano-aoc,effnet-lite0"


@click.command("demo")
@device_option
@click.option("--quick", is_flag=True, default=False, help="Fewer triplets and steps (a smoke run).")
@click.option(
    "--full",
    is_flag=True,
    default=False,
    help="Every offline metric, also the slow ones (effnet-ensemble, dinov2-s14: about 15 minutes on 2 cores).",
)
@click.pass_context
def demo_cmd(ctx: click.Context, device: torch.device, quick: bool, full: bool) -> None:
    """What `make demo` runs: score, certify, retrieval and the quick bench, offline.

    What `make demo` runs, offline: clean 2AFC of several metrics on the bundled `mini` set, certified
    accuracy of the shipped lipsim-nano-aoc, lipsim-nano-cert's clean, attacked and certified recall on the bundled
    retrieval set, then the quick benchmark of every offline metric (clean, robust under APGD at l2 and
    linf, certified) and its leaderboard. Reports go to runs/demo/ (the benchmark resumes if interrupted).
    The default leaves out the slow metrics (a few minutes on 2 cores); --full runs them all."""
    # ctx.invoke fills every option left out with its default (data mini, certified radii 36/72/108 /255,
    # APGD-CE and l2 0.5,1 for retrieval, ...); only the demo's own settings are here. The demo claims runs/demo
    # first, so a second demo at once is refused before any work (its sections claim their own folders inside)
    from robustsim.io import OutputDir

    with OutputDir(Path("runs/demo"), hint="another demo is running"):
        _run(ctx, device, quick, full)


def _section(title: str) -> None:
    """A section's heading; the thread count follows the machine's load from one section to the next."""
    from robustsim.threads import follow_machine

    threads = follow_machine()
    say(f"{title} [{threads} thread{'s' if threads > 1 else ''}]")


def _run(ctx: click.Context, device: torch.device, quick: bool, full: bool) -> None:
    _section("== clean 2AFC on the bundled synthetic `mini` test split (each row as its metric finishes)")
    scored = OFFLINE if full else QUICK
    ctx.invoke(score_cmd, metrics=scored, device=device, limit=64 if quick else None, groups=True)
    _section("\n== certified 2AFC of the shipped 1-Lipschitz metric lipsim-nano-aoc (sound l2 radius)")
    ctx.invoke(certify_cmd, metric="lipsim-nano-aoc", batch_size=64, device=device, limit=64 if quick else None)
    _section("\n== retrieval with lipsim-nano-cert on the bundled synthetic retrieval set (l2 attacks on the query)")
    ctx.invoke(
        retrieval_cmd,
        metric="lipsim-nano-cert",
        steps=3 if quick else 20,
        out_dir=Path("runs/demo/retrieval-lipsim-nano-cert"),
        overwrite=True,
        device=device,
        limit=8 if quick else None,
    )
    _section("\n== quick benchmark of the offline metrics on mini (robustsim bench)")
    benched = OFFLINE if full else BENCHED
    ctx.invoke(bench_cmd, metrics=benched, out_dir=Path("runs/demo/bench"), device=device, limit=8 if quick else None)
    if not full:
        say("(robustsim demo --full adds ms-ssim, effnet-ensemble, dinov2-s14 and the other LipSim nets)")
