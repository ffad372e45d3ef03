"""``robustsim certify``: certified 2AFC accuracy, by a Lipschitz proof or by randomized smoothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from robustsim.cli.options import (
    FiniteFloat,
    allow_outside_option,
    batch_option,
    check_file_outputs,
    data_option,
    device_option,
    dry_run_option,
    dtype_option,
    file_output_option,
    is_main,
    limit_option,
    load_metrics,
    metric_option,
    open_data,
    out_dir_option,
    overwrite_option,
    registry_choice,
    say,
    say_cost,
    seed_option,
    threat_options,
)
from robustsim.limits import MAX_SIGMA
from robustsim.settings import CenterSettings, SmoothingSettings
from robustsim.threat import ThreatModel

if TYPE_CHECKING:
    import torch

    from robustsim.certify.radius import Mode

CERTIFY_FILES = ("report.json", "report.md", "report.html", "certified.png", "bound.png")
DEFAULT_CERT_EPS = {"l2": "36/255,72/255,108/255", "linf": "1/255,2/255,4/255"}


@click.command("certify")
@metric_option("--metric", required=True, help="Zoo name, a+b ensemble or checkpoint folder.")
@data_option
@threat_options(
    DEFAULT_CERT_EPS,
    target_help="Which image the attacker may move (all: each of the three within eps). Smoothing: ref only.",
    eps_help="Comma-separated radii (linf: certified through the l2 ball of radius sqrt(d) eps).",
)
@click.option(
    "--method",
    type=registry_choice("robustsim.certify", "METHODS", first=("auto",)),
    default="auto",
    show_default=True,
    help="lipschitz: a proof from the metric's Lipschitz bound; smoothing: a certificate of the smoothed "
    "metric (any metric); auto: lipschitz where the metric has a bound, else smoothing; center-smoothing: "
    "not a 2AFC certificate but a bound on how far each reference image's smoothed output can move within "
    "eps (Kumar & Goldstein 2021; any metric).",
)
@click.option(
    "--mode",
    type=registry_choice("robustsim.certify.radius", "MODES"),
    default="sound",
    show_default=True,
    help="Lipschitz radius: sound (no assumption on ||f(x)||) or lipsim (the published formula; assumes "
    "||f(x)|| >= 1, over-claims otherwise).",
)
@click.option(
    "--sigma",
    type=FiniteFloat(0, MAX_SIGMA, min_open=True),
    default=SmoothingSettings.sigma,
    show_default=True,
    help="Smoothing: noise std in [0, 1] pixel units.",
)
@click.option(
    "--n",
    "n_samples",
    type=click.IntRange(1, 10**7),
    default=SmoothingSettings.n,
    show_default=True,
    help="Smoothing: noise samples per triplet (center-smoothing: certification samples per image; "
    f"{CenterSettings.n} is "
    "its default when --n is not given).",
)
@click.option(
    "--n-center",
    type=click.IntRange(1, 10**7),
    default=CenterSettings.n_center,
    show_default=True,
    help="Center smoothing: samples for each of the centre's two checks.",
)
@click.option(
    "--delta",
    type=FiniteFloat(0, 0.5, min_open=True, max_open=True),
    default=CenterSettings.delta,
    show_default=True,
    help="Center smoothing: the margin Delta over half the mass that a centre must hold.",
)
@click.option(
    "--n0",
    type=click.IntRange(0, 10**7),
    default=SmoothingSettings.n0,
    show_default=True,
    help="Smoothing: selection samples (0: both classes bounded at alpha/2 from the n samples).",
)
@click.option(
    "--alpha",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    default=SmoothingSettings.alpha,
    show_default=True,
    help="Smoothing: failure probability of each certificate.",
)
@seed_option
@out_dir_option(", ".join(CERTIFY_FILES))
@overwrite_option
@file_output_option("--json", "Per-triplet radii and the curve (the report.json of --out).")
@file_output_option("--plot", "Certified accuracy vs epsilon (PNG/PDF).")
@batch_option
@device_option
@limit_option()
@allow_outside_option
@dtype_option
@dry_run_option
def certify_cmd(
    metric: str,
    data_spec: str,
    threat: ThreatModel,
    method: str,
    mode: str,
    sigma: float,
    n_samples: int,
    n_center: int,
    delta: float,
    n0: int,
    alpha: float,
    seed: int,
    out_dir: Path | None,
    overwrite: bool,
    json: Path | None,
    plot: Path | None,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
    dtype: str | None,
    dry_run: bool,
) -> None:
    """Certified 2AFC accuracy at each epsilon: a Lipschitz proof, smoothing, or center smoothing.

    Certified 2AFC accuracy at each epsilon, in the pixels of the images as loaded (the metric's own
    resize and normalisation are part of the certificate).

    lipschitz: a proof for 1-Lipschitz embedding metrics (LipSim): the radius within which the moving
    image(s) cannot change the decision, computed in float64 with the rounding bound subtracted.
    smoothing: for any metric, a certificate of the smoothed decision under Gaussian noise on the
    reference (Cohen et al. 2019), each sound with probability 1 - alpha; abstentions are reported.
    center-smoothing: for any metric, a bound (metric units, probability 1 - alpha) on how far the
    center-smoothed output of each reference image can move within eps (JSON: per-image bounds, the abstain
    rate, the confidence). The estimated cost is printed first (--dry-run: only that).
    """
    from contextlib import nullcontext

    from robustsim.cost import certify_estimate
    from robustsim.io import OutputDir

    check_file_outputs(json=json, plot=plot)
    claim = OutputDir(out_dir, CERTIFY_FILES, overwrite) if out_dir and is_main() and not dry_run else nullcontext(None)
    with claim as out:
        (m,) = load_metrics([metric], device, dtype)
        method = _method(m, method, threat)
        data = open_data(data_spec, limit, allow_outside=allow_outside)
        n_given = click.get_current_context().get_parameter_source("n_samples") != click.core.ParameterSource.DEFAULT
        settings = _settings(method, sigma, n_samples if n_given else None, n_center, delta, n0, alpha)
        passes = 0 if settings is None else settings.passes()
        if say_cost(certify_estimate(m, data, method, batch_size, device, passes), dry_run):
            return
        res = _certify(m, data, threat, cast("Mode", mode), settings, batch_size, seed, device)
        if res is None:  # a torchrun rank other than 0
            return
        what = "center-smoothing bounds" if method == "center-smoothing" else "certified 2AFC (%)"
        say(f"{what} of {m.name} on {data.name}: {res.describe()}")
        say(res.table())
        _write(res, out, json, plot)


def _method(metric, method: str, threat: ThreatModel) -> str:
    """The method ``auto`` stands for (lipschitz where the metric has a bound, else smoothing), once ``threat``
    suits it (InputError otherwise)."""
    from robustsim.certify import has_certificate
    from robustsim.certify.center import center_threat

    if method == "auto":
        method = "lipschitz" if has_certificate(metric) else "smoothing"
    if method == "center-smoothing":
        center_threat(threat)
    elif method == "smoothing":
        threat.require_reference(method)
    return method


def _settings(method: str, sigma: float, n: int | None, n_center: int, delta: float, n0: int, alpha: float):
    """The method's settings (None for a Lipschitz proof); ``n`` None: the method's own default."""
    if method == "center-smoothing":
        n = CenterSettings.n if n is None else n
        return CenterSettings(sigma, n, n_center, CenterSettings.candidates, delta, alpha)
    if method == "smoothing":
        return SmoothingSettings(sigma, SmoothingSettings.n if n is None else n, n0, alpha)
    return None


def _certify(metric, data, threat: ThreatModel, mode: Mode, settings, batch_size: int, seed: int, device):
    """The certificate of ``settings``' method (a Lipschitz proof when None); None on torchrun ranks but 0."""
    from robustsim.certify import certify_2afc, certify_smoothed
    from robustsim.certify.center import certify_center

    if settings is None:
        return certify_2afc(metric, data, threat, mode=mode, batch_size=batch_size, device=device)
    run = certify_center if isinstance(settings, CenterSettings) else certify_smoothed
    return run(metric, data, threat, **settings.to_json(), batch_size=min(batch_size, 16), seed=seed, device=device)


def _write(res, out, json: Path | None, plot: Path | None) -> None:
    """The report folder (``out``), the JSON and the figure, each only when asked for."""
    from robustsim.io import write_json
    from robustsim.plots import save_figure
    from robustsim.reports import write_report

    if out is not None:
        for f in write_report(res, out):
            say(f"wrote {f}")
    if json:
        write_json(json, res.to_json())
        say(f"wrote {json}")
    if plot:
        save_figure(res.figure(), plot)
        say(f"wrote {plot}")
