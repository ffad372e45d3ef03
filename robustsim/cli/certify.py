"""``robustsim certify``: certified 2AFC accuracy, by a Lipschitz proof or by randomized smoothing."""

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
    seed_option,
)
from robustsim.table import format_table, pct


@click.command("certify")
@click.option("--metric", required=True, help="Zoo name, a+b ensemble or checkpoint folder.")
@data_option
@click.option("--eps", "eps_text", default="36/255,72/255,108/255", show_default=True, help="l2 radii.")
@click.option(
    "--method",
    type=click.Choice(["auto", "lipschitz", "smoothing"]),
    default="auto",
    show_default=True,
    help="lipschitz: a proof from the metric's Lipschitz bound; smoothing: a certificate of the smoothed "
    "metric (any metric); auto: lipschitz where the metric has a bound, else smoothing.",
)
@click.option(
    "--target",
    type=click.Choice(["ref", "x0", "x1", "all"]),
    default="ref",
    show_default=True,
    help="Which image the attacker may move (all: each of the three within eps). Smoothing: ref only.",
)
@click.option(
    "--mode",
    type=click.Choice(["sound", "lipsim"]),
    default="sound",
    show_default=True,
    help="Lipschitz radius: sound (no assumption on ||f(x)||) or lipsim (the published formula; assumes "
    "||f(x)|| >= 1, over-claims otherwise).",
)
@click.option(
    "--sigma",
    type=click.FloatRange(0, min_open=True),
    default=0.25,
    show_default=True,
    help="Smoothing: noise std in [0, 1] pixel units.",
)
@click.option(
    "--n",
    "n_samples",
    type=click.IntRange(1, 10**7),
    default=512,
    show_default=True,
    help="Smoothing: noise samples per triplet.",
)
@click.option(
    "--n0",
    type=click.IntRange(0, 10**7),
    default=0,
    show_default=True,
    help="Smoothing: selection samples (0: both classes bounded at alpha/2 from the n samples).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.001,
    show_default=True,
    help="Smoothing: failure probability of each certificate.",
)
@seed_option
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
    method: str,
    target: str,
    mode: str,
    sigma: float,
    n_samples: int,
    n0: int,
    alpha: float,
    seed: int,
    json: Path | None,
    plot: Path | None,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
) -> None:
    """Certified 2AFC accuracy at each l2 epsilon, in the pixels of the images as loaded (the metric's own
    resize and normalisation are part of the certificate).

    lipschitz: a proof for 1-Lipschitz embedding metrics (LipSim): the radius within which the moving
    image(s) cannot change the decision, computed in float64 with the rounding bound subtracted.
    smoothing: for any metric, a certificate of the smoothed decision under Gaussian noise on the
    reference (Cohen et al. 2019), each sound with probability 1 - alpha; abstentions are reported.
    """
    from robustsim.certify import certify_2afc, certify_smoothed
    from robustsim.certify.lipschitz import network_lipschitz
    from robustsim.errors import RobustsimError
    from robustsim.io import write_json

    eps = parse_floats(eps_text, "--eps")
    check_file_outputs(json=json, plot=plot)
    (m,) = load_metrics([metric], device)
    if method == "auto":
        try:
            network_lipschitz(m)
            method = "lipschitz"
        except RobustsimError:
            method = "smoothing"
    if method == "smoothing" and target != "ref":
        raise click.BadParameter(
            "smoothing certifies the reference image only; use --target ref", param_hint="--target"
        )
    data = open_data(data_spec, limit, allow_outside=allow_outside)
    if method == "lipschitz":
        res = certify_2afc(m, data, eps, mode=mode, batch_size=batch_size, device=device, target=target)  # type: ignore[arg-type]
        if res is None:  # a torchrun rank other than 0
            return
        how = f"method=lipschitz ({res.details['lipschitz_source']} bound), mode={mode}, L={res.lipschitz:g}"
    else:
        res = certify_smoothed(
            m,
            data,
            eps,
            sigma,
            n=n_samples,
            n0=n0,
            alpha=alpha,
            batch_size=min(batch_size, 16),
            seed=seed,
            device=device,
        )
        how = (
            f"method=smoothing (a certificate of the SMOOTHED metric, sigma={sigma:g}, n={n_samples}, alpha={alpha:g}, "
            f"abstained on {100 * res.details['abstain_rate']:.1f}%)"
        )
    rows = [(f"{e:.4g} ({e * 255:.0f}/255)", pct(res.clean_score), pct(res.certified_at(e))) for e in eps]
    click.echo(f"certified 2AFC (%) of {m.name} on {data.name}, {target} moving; {how}; n={len(res.p)}")
    clean = "clean" if method == "lipschitz" else "smoothed"
    click.echo(format_table([f"eps (l2, {target})", clean, "certified"], rows))
    certified = res.radius[res.radius >= 0]
    if certified.numel():
        click.echo(f"median certified radius: {float(certified.median()):.4f}")
    if json:
        write_json(json, res.to_json())
        click.echo(f"wrote {json}")
    if plot:
        from robustsim.plots import Curve, accuracy_figure, save_figure

        fig = accuracy_figure(
            [
                Curve(clean, eps, [res.clean_score] * len(eps), "--"),
                Curve(f"certified ({method}, {target})", eps, [res.certified_at(e) for e in eps]),
            ],
            "l2",
            f"{m.name} on {data.name}",
        )
        save_figure(fig, plot)
        click.echo(f"wrote {plot}")
