"""``robustsim audit``: attack a metric on 2AFC triplets and report clean / robust / certified accuracy."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from robustsim.cli.options import (
    DEFAULT_EPS,
    LazyHelp,
    allow_outside_option,
    batch_option,
    data_option,
    device_option,
    dry_run_option,
    dtype_option,
    is_main,
    limit_option,
    load_metrics,
    metric_option,
    open_data,
    out_dir_option,
    overwrite_option,
    parse_names,
    precision_option,
    restarts_option,
    say,
    say_cost,
    seed_option,
    smoothing_option,
    steps_option,
    threat_options,
)
from robustsim.limits import MAX_EOT
from robustsim.settings import AUDIT_SMOOTHING, AttackSettings
from robustsim.threat import ThreatModel

if TYPE_CHECKING:
    import torch

RESUME = ".resume"  # finished batches of an interrupted audit (robustsim.resume)
AUDIT_FILES = ("report.json", "report.md", "report.html", "robust.png", "examples.png")


def _attack_names() -> list[str]:
    from robustsim.attacks.registry import list_attacks

    return list_attacks()


@click.command("audit")
@metric_option("--metric", required=True, help="Zoo name, a+b ensemble or checkpoint folder.")
@data_option
@threat_options(DEFAULT_EPS)
@click.option(
    "--attacks",
    "attacks_text",
    default="apgd-ce,apgd-margin",
    show_default=True,
    cls=LazyHelp,
    help_text=lambda: f"Comma-separated: {', '.join(_attack_names())}.",
)
@steps_option(AttackSettings.steps)
@click.option(
    "--eot",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_EOT),
    help="Expectation over Transformation: average each step's gradient over N draws of a randomised metric "
    "(AutoAttack's rand version uses 20); pgd and apgd attacks.",
)
@smoothing_option(
    "Attack the metric smoothed by Gaussian noise of this std on the reference: the attack sees one noise "
    "draw per call (use --eot), a break is judged by the smoothed prediction (an abstention is not robust)."
)
@click.option(
    "--smoothing-n",
    default=AUDIT_SMOOTHING.n,
    show_default=True,
    type=click.IntRange(1, 10**7),
    help="Noise samples of each smoothed prediction.",
)
@restarts_option
@seed_option
@out_dir_option("report.json, report.md, report.html (one offline page), robust.png, examples.png")
@overwrite_option
@batch_option
@device_option
@limit_option()
@allow_outside_option
@precision_option
@dtype_option
@dry_run_option
def audit_cmd(
    metric: str,
    data_spec: str,
    threat: ThreatModel,
    attacks_text: str,
    steps: int,
    eot: int,
    sigma: float | None,
    smoothing_n: int,
    restarts: int,
    seed: int,
    out_dir: Path | None,
    overwrite: bool,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
    precision: str,
    dtype: str | None,
    dry_run: bool,
) -> None:
    """Attack a metric on 2AFC triplets; report clean, robust (worst case) and certified accuracy.

    Robust accuracy per triplet is the worst case over the attacks; the report checks
    certified <= robust <= clean and fails loudly if a law breaks. The estimated cost is printed first
    (--dry-run: only that).
    """
    from contextlib import nullcontext

    from robustsim.attacks import make_attack
    from robustsim.audit import run_audit
    from robustsim.cost import audit_estimate
    from robustsim.io import OutputDir
    from robustsim.metrics.smoothed import SmoothedMetric
    from robustsim.reports import write_report

    attacks = parse_names(attacks_text, "--attacks")
    built = [make_attack(a, threat, steps=steps, restarts=restarts, eot=eot) for a in attacks]  # bad names: now
    if sigma is not None:
        threat.require_reference("--smoothing")
    claim = OutputDir(out_dir, AUDIT_FILES, overwrite) if out_dir and is_main() and not dry_run else nullcontext(None)
    with claim as out:
        (m,) = load_metrics([metric], device, dtype)
        data = open_data(data_spec, limit, size=m.input_size, allow_outside=allow_outside)
        # with --out every finished batch is kept in <out>/.resume: Ctrl-C, then the same command, continues
        resume = Path(out_dir) / RESUME if out_dir else None
        smoothing = None if sigma is None else replace(AUDIT_SMOOTHING, sigma=sigma, n=smoothing_n)
        attacked = m if smoothing is None else SmoothedMetric(m, **smoothing.to_json(), seed=seed)
        if say_cost(audit_estimate(attacked, data, threat, built, batch_size, device), dry_run):
            return
        report = run_audit(
            attacked,
            data,
            threat,
            attacks,
            steps=steps,
            eot=eot,
            precision=precision,
            restarts=restarts,
            seed=seed,
            batch_size=batch_size,
            device=device,
            resume=resume,
        )
        if report is None:  # a torchrun rank other than 0
            return
        say(f"audit of {report.metric} on {data.name}: {threat.describe()}")
        say(report.table())
        if out is not None:
            for f in write_report(report, out):
                say(f"wrote {f}")
            shutil.rmtree(Path(out) / RESUME, ignore_errors=True)
