"""``robustsim audit``: attack a metric on 2AFC triplets and report clean / robust / certified accuracy."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from robustsim.cli.options import (
    DEFAULT_EPS,
    allow_outside_option,
    batch_option,
    data_option,
    device_option,
    eps_option,
    is_main,
    limit_option,
    load_metrics,
    open_data,
    out_dir_option,
    overwrite_option,
    parse_floats,
    parse_names,
    restarts_option,
    seed_option,
)

AUDIT_FILES = ("report.json", "report.md", "robust.png", "examples.png")


@click.command("audit")
@click.option("--metric", required=True, help="Zoo name, a+b ensemble or checkpoint folder.")
@data_option
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@eps_option
@click.option(
    "--attacks",
    "attacks_text",
    default="apgd-ce,apgd-margin",
    show_default=True,
    help="Comma-separated: pgd, pgd-cosine, apgd-ce, apgd-margin, autoattack, aa-apgd-ce, square, fab, "
    "foolbox-pgd, foolbox:<Class>.",
)
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Iterations per attack.")
@restarts_option
@click.option(
    "--target",
    type=click.Choice(["ref", "x0", "x1", "all"]),
    default="ref",
    show_default=True,
    help="Which image the attacker perturbs.",
)
@seed_option
@out_dir_option("report.json, report.md, robust.png, examples.png")
@overwrite_option
@batch_option
@device_option
@limit_option()
@allow_outside_option
def audit_cmd(
    metric: str,
    data_spec: str,
    norm: str,
    eps: list[float] | None,
    attacks_text: str,
    steps: int,
    restarts: int,
    target: str,
    seed: int,
    out_dir: Path | None,
    overwrite: bool,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
) -> None:
    """Attack a metric on 2AFC triplets; report clean, robust (worst case) and certified accuracy.

    Robust accuracy per triplet is the worst case over the attacks; the report checks
    certified <= robust <= clean and fails loudly if a law breaks.
    """
    from contextlib import nullcontext

    from robustsim.attacks import make_attack
    from robustsim.audit import audit_table, run_audit, write_audit
    from robustsim.io import OutputDir

    eps = eps if eps is not None else parse_floats(DEFAULT_EPS[norm], "--eps")
    attacks = parse_names(attacks_text, "--attacks")
    for a in attacks:  # fail on a bad name before any work
        make_attack(a, norm)  # type: ignore[arg-type]
    claim = OutputDir(out_dir, AUDIT_FILES, overwrite) if out_dir and is_main() else nullcontext(None)
    with claim as out:
        (m,) = load_metrics([metric], device)
        data = open_data(data_spec, limit, size=m.input_size, allow_outside=allow_outside)
        report, examples = run_audit(
            m,
            data,
            norm,  # type: ignore[arg-type]
            eps,
            attacks,
            steps=steps,
            restarts=restarts,
            seed=seed,
            batch_size=batch_size,
            device=device,
            target=target,  # type: ignore[arg-type]
        )
        if report is None:  # a torchrun rank other than 0
            return
        click.echo(f"audit of {m.name} on {data.name}: {norm} attacks on the {target} image")
        click.echo(audit_table(report))
        if out is not None:
            for f in write_audit(report, examples, out):
                click.echo(f"wrote {f}")
