"""The ``robustsim`` command line. Bad input: a one-line message on stderr and exit code 2."""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import click
import torch

from robustsim.errors import RobustsimError
from robustsim.table import format_table, pct


def parse_floats(text: str, what: str = "value") -> list[float]:
    """'36/255,72/255' or '0.5,1' -> floats (fractions allowed); raises click.BadParameter."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(float(Fraction(part)))
        except (ValueError, ZeroDivisionError):
            raise click.BadParameter(
                f"{part!r} is not a number; write e.g. 0.5,1 or 36/255,72/255", param_hint=what
            ) from None
    if not out:
        raise click.BadParameter("needs at least one number", param_hint=what)
    if any(v < 0 for v in out):
        raise click.BadParameter("epsilons must be >= 0", param_hint=what)
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(
            f"{device!r} is not a device; use cpu, cuda, cuda:1 or auto", param_hint="--device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu", param_hint="--device")
    return dev


device_option = click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda when available)."
)
batch_option = click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Triplets per batch."
)
data_option = click.option(
    "--data",
    "data_spec",
    default="mini",
    show_default=True,
    help="Triplets: mini[:split], nights:PATH[:split], bapps:PATH[:split[:cats]], csv:FILE.",
)
limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N triplets.")


def open_data(spec: str, limit: int | None):
    from torch.utils.data import Subset

    from robustsim.data import open_triplets

    data = open_triplets(spec)
    if limit is not None and limit < len(data):
        sub = Subset(data, range(limit))
        sub.name = data.name  # type: ignore[attr-defined]
        sub.groups = lambda: data.groups()[:limit]  # type: ignore[attr-defined]
        return sub
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="robustsim")
def cli() -> None:
    """robustsim: audit, certify and train robust perceptual similarity metrics.

    Metrics take images in [0, 1]; 2AFC data comes from a spec (see `robustsim score --help`).
    Nothing is downloaded: weights are read from local files.
    """


@cli.command("metrics")
def metrics_cmd() -> None:
    """List the metric zoo and whether each metric's weights are available offline."""
    from robustsim.metrics import metric_entries

    rows = [(e.name, "yes" if e.weights_available() else "no", e.description) for e in metric_entries()]
    click.echo(format_table(["metric", "weights", "description"], rows))


@cli.command("score")
@click.option(
    "--metric",
    "metrics",
    default="l2,ssim,ms-ssim,effnet-lite0",
    show_default=True,
    help="Comma-separated zoo names, a+b ensembles or checkpoint paths.",
)
@data_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write scores to this JSON file.")
@batch_option
@device_option
@limit_option
@click.option("--groups/--no-groups", default=False, help="Also print per-category scores.")
def score_cmd(
    metrics: str, data_spec: str, json_path: str | None, batch_size: int, device: str, limit: int | None, groups: bool
) -> None:
    """Clean 2AFC score of one or more metrics on a triplet set."""
    from robustsim.evaluate import evaluate_2afc
    from robustsim.io import write_json
    from robustsim.metrics import load_metric

    dev = resolve_device(device)
    data = open_data(data_spec, limit)
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise click.BadParameter("needs at least one metric", param_hint="--metric")
    loaded = [load_metric(n, device=dev) for n in names]  # fail on a bad name before any work
    results, rows = [], []
    for name, metric in zip(names, loaded, strict=True):
        t0 = time.perf_counter()
        res = evaluate_2afc(metric, data, batch_size=batch_size, device=dev)
        secs = time.perf_counter() - t0
        results.append(
            {
                "metric": name,
                "score": res.score,
                "n": len(res.p),
                "seconds": secs,
                "groups": res.group_scores(),
                "d0": res.d0.tolist(),
                "d1": res.d1.tolist(),
            }
        )
        rows.append((name, pct(res.score), len(res.p), f"{secs:.1f}"))
    click.echo(f"2AFC score (%) on {data.name}")
    click.echo(format_table(["metric", "2AFC", "n", "seconds"], rows))
    if groups:
        cats = sorted({g for r in results for g in r["groups"]})
        if cats:
            click.echo()
            click.echo(
                format_table(
                    ["metric", *cats], [(r["metric"], *(pct(r["groups"].get(c)) for c in cats)) for r in results]
                )
            )
    if json_path:
        write_json(json_path, {"version": 1, "data": data_spec, "results": results})
        click.echo(f"wrote {json_path}")


@cli.command("demo")
@device_option
@click.pass_context
def demo_cmd(ctx: click.Context, device: str) -> None:
    """Score several metrics on the bundled offline `mini` set (what `make demo` runs)."""
    click.echo("robustsim demo: clean 2AFC on the bundled synthetic `mini` test split (600 triplets)")
    ctx.invoke(
        score_cmd,
        metrics="l2,ssim,ms-ssim,effnet-lite0,effnet-ensemble",
        data_spec="mini",
        json_path=None,
        batch_size=32,
        device=device,
        limit=None,
        groups=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: RobustsimError -> one line on stderr, exit 2."""
    try:
        cli.main(args=argv, prog_name="robustsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2 if isinstance(err, click.UsageError) else err.exit_code)
    except RobustsimError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
