"""``robustsim bench``: every metric under one protocol; cards, a leaderboard (Markdown, HTML) and a figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from robustsim.cli.options import (
    UserPath,
    batch_option,
    data_option,
    device_option,
    dry_run_option,
    dtype_option,
    is_main,
    limit_option,
    parse_names,
    precision_option,
    registry_choice,
    say,
    smoothing_option,
)

if TYPE_CHECKING:
    import torch


@click.command("bench")
@click.option(
    "--metrics", default="all", show_default=True, help="Comma-separated metrics, or all (every metric runnable here)."
)
@data_option
@click.option(
    "--protocol",
    type=registry_choice("robustsim.bench.protocol", "PROTOCOLS"),
    default="quick",
    show_default=True,
    help="quick: 100 triplets, APGD-CE + APGD-margin at 10 steps (CPU); full: all triplets, 100 steps + Square.",
)
@smoothing_option(
    "Also certify metrics without a Lipschitz bound by randomized smoothing at this sigma, and bound how "
    "far their center-smoothed output moves at the certified radii (center smoothing, the first 10 images)."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    default=None,
    type=UserPath(output=True),
    help="Folder for cards/, cells/, leaderboard.md, leaderboard.html, leaderboard.png.",
)
@batch_option
@device_option
@limit_option()
@precision_option
@dtype_option
@dry_run_option
def bench_cmd(
    metrics: str,
    data_spec: str,
    protocol: str,
    sigma: float | None,
    out_dir: Path,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    precision: str,
    dtype: str | None,
    dry_run: bool,
) -> None:
    """Benchmark metrics under a standard protocol: cards, a leaderboard and its figure.

    Benchmark metrics under a standard protocol: clean 2AFC; robust 2AFC under the AutoAttack-style
    ensemble (reference perturbed) at l2 0.5, 1 and linf 2/255, 4/255; certified 2AFC at l2 36/72/108 /255
    where the metric has a certificate. Metrics that cannot run here are skipped with the reason.

    Resumable: every cell is saved as it finishes (keyed by the protocol, the data and the weights); the same
    command again continues a killed run. Under `torchrun --nproc_per_node N -m robustsim bench ...` the
    triplets are shared over the processes (and machines, with torchrun's rendezvous). Each metric's estimated
    cost is printed before its cells (--dry-run: only the estimates, nothing written).
    """
    from contextlib import nullcontext

    from robustsim.bench import run
    from robustsim.io import OutputDir, check_output_dir

    names = ["all"] if metrics.strip() == "all" else parse_names(metrics, "--metrics")
    check_output_dir(out_dir)
    # resuming into the same --out is the point
    claim = OutputDir(out_dir) if is_main() and not dry_run else nullcontext(out_dir)
    with claim:
        result = run(
            names,
            data_spec,
            out_dir,
            protocol=protocol,
            smoothing=sigma,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log=lambda m: say(m, err=True),
            dry_run=dry_run,
            precision=precision,
            dtype=dtype,
        )
    if result is None or dry_run:
        return
    say((out_dir / "leaderboard.md").read_text())
    for f in ("leaderboard.md", "leaderboard.html", "leaderboard.png"):
        say(f"wrote {out_dir / f}")
