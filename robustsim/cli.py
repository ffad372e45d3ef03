"""The ``robustsim`` command line. Bad input: a one-line message on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import faulthandler
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
seed_option = click.option("--seed", default=0, show_default=True, type=int)
restarts_option = click.option("--restarts", default=1, show_default=True, type=click.IntRange(1))


def out_dir_option(files: str):
    """``--out DIR``: the folder the command writes ``files`` into (atomically)."""
    return click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help=f"Write {files} here.")


limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N triplets.")


def open_data(spec: str, limit: int | None, size: int | None = None):
    from torch.utils.data import Subset

    from robustsim.data import open_triplets

    data = open_triplets(spec, size=size)
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


eps_option = click.option(
    "--eps",
    "eps_text",
    default=None,
    help="Comma-separated radii; fractions allowed (36/255). Default depends on --norm.",
)
DEFAULT_EPS = {"l2": "0.5,1,2", "linf": "1/255,2/255,4/255"}


@cli.command("certify")
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Per-triplet radii and the curve.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Certified accuracy vs epsilon (PNG/PDF).")
@batch_option
@device_option
@limit_option
def certify_cmd(
    metric: str,
    data_spec: str,
    eps_text: str,
    mode: str,
    json_path: str | None,
    plot_path: str | None,
    batch_size: int,
    device: str,
    limit: int | None,
) -> None:
    """Certified 2AFC accuracy of a 1-Lipschitz embedding metric (LipSim) at each l2 epsilon.

    Only the reference image moves; images are loaded at the metric's input size so radii are in the
    pixel space the network sees. Metrics without a Lipschitz guarantee are refused (use `audit`).
    """
    from robustsim.certify import certify_2afc, require_lipschitz
    from robustsim.io import write_json
    from robustsim.metrics import load_metric

    eps = parse_floats(eps_text, "--eps")
    dev = resolve_device(device)
    m = load_metric(metric, device=dev)
    require_lipschitz(m)
    data = open_data(data_spec, limit, size=m.input_size)
    res = certify_2afc(m, data, eps, mode=mode, batch_size=batch_size, device=dev)  # type: ignore[arg-type]
    rows = [(f"{e:.4g} ({e * 255:.0f}/255)", pct(res.clean_score), pct(res.certified_at(e))) for e in eps]
    click.echo(f"certified 2AFC (%) of {m.name} on {data.name} (mode={mode}, L={res.lipschitz:g}, n={len(res.p)})")
    click.echo(format_table(["eps (l2)", "clean", "certified"], rows))
    click.echo(f"median certified radius: {float(res.radius.median()):.4f}")
    if json_path:
        write_json(json_path, res.to_json())
        click.echo(f"wrote {json_path}")
    if plot_path:
        from robustsim.plots import Curve, accuracy_figure, save_figure

        fig = accuracy_figure(
            [
                Curve("clean", eps, [res.clean_score] * len(eps), "--"),
                Curve(f"certified ({mode})", eps, [res.certified_at(e) for e in eps]),
            ],
            "l2",
            f"{m.name} on {data.name}",
        )
        save_figure(fig, plot_path)
        click.echo(f"wrote {plot_path}")


@cli.command("audit")
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
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="Iterations per attack.")
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
@batch_option
@device_option
@limit_option
def audit_cmd(
    metric: str,
    data_spec: str,
    norm: str,
    eps_text: str | None,
    attacks_text: str,
    steps: int,
    restarts: int,
    target: str,
    seed: int,
    out_dir: str | None,
    batch_size: int,
    device: str,
    limit: int | None,
) -> None:
    """Attack a metric on 2AFC triplets; report clean, robust (worst case) and certified accuracy.

    Robust accuracy per triplet is the worst case over the attacks; the report checks
    certified <= robust <= clean and fails loudly if a law breaks.
    """
    from pathlib import Path

    from robustsim.audit import audit_table, run_audit, write_audit
    from robustsim.metrics import load_metric

    eps = parse_floats(eps_text or DEFAULT_EPS[norm], "--eps")
    attacks = [a.strip() for a in attacks_text.split(",") if a.strip()]
    from robustsim.attacks import make_attack

    for a in attacks:  # fail on a bad name before any work
        make_attack(a, norm)  # type: ignore[arg-type]
    dev = resolve_device(device)
    m = load_metric(metric, device=dev)
    data = open_data(data_spec, limit, size=m.input_size)
    report, examples = run_audit(
        m,
        data,
        norm,
        eps,
        attacks,
        steps=steps,
        restarts=restarts,
        seed=seed,  # type: ignore[arg-type]
        batch_size=batch_size,
        device=dev,
        target=target,
    )  # type: ignore[arg-type]
    click.echo(f"audit of {m.name} on {data.name}: {norm} attacks on the {target} image")
    click.echo(audit_table(report))
    if out_dir:
        for f in write_audit(report, examples, Path(out_dir)):
            click.echo(f"wrote {f}")


@cli.command("demo")
@device_option
@click.option("--quick", is_flag=True, help="Fewer triplets and steps (a smoke run).")
@click.pass_context
def demo_cmd(ctx: click.Context, device: str, quick: bool) -> None:
    """What `make demo` runs: clean 2AFC of several metrics on the bundled `mini` set, certified
    accuracy of the shipped lipsim-nano, an audit of l2 and effnet-ensemble (l2 and linf, three
    epsilons each), then lipsim-nano's clean, attacked and certified recall on the bundled
    retrieval set."""
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
                out_dir=f"runs/demo/{metric}-{norm}",
                batch_size=50,
                device=device,
                limit=16 if quick else limit,
            )
    from robustsim.cli_retrieval import retrieval_cmd

    click.echo("\n== retrieval with lipsim-nano on the bundled synthetic retrieval set (l2 attacks on the query)")
    ctx.invoke(
        retrieval_cmd,
        metric="lipsim-nano",
        steps=3 if quick else 20,
        out_dir="runs/demo/retrieval-lipsim-nano",
        device=device,
        limit=8 if quick else None,
    )


@cli.command("plot")
@click.argument("reports", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["certified", "robust", "radius"]), default="certified", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Figure file (.png or .pdf).")
def plot_cmd(reports: tuple[str, ...], kind: str, out: str) -> None:
    """Overlay audit / certify reports (folders or JSON files): one curve per metric.

    certified / robust: accuracy vs epsilon (l2, or linf in /255); radius: histogram of certified radii.
    """
    from robustsim.overlay import load_report, overlay_figure
    from robustsim.plots import save_figure

    fig = overlay_figure([load_report(p) for p in reports], kind)  # type: ignore[arg-type]
    save_figure(fig, out)
    click.echo(f"wrote {out}")


def _add_subgroups() -> None:
    from robustsim.cli_retrieval import retrieval_cmd
    from robustsim.cli_train import train_group

    cli.add_command(train_group)
    cli.add_command(retrieval_cmd)


_add_subgroups()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: RobustsimError -> one line on stderr, exit 2; a crash in native code (a signal)
    still prints the Python stack of every thread."""
    if not faulthandler.is_enabled():
        with contextlib.suppress(AttributeError, ValueError, OSError):  # stderr without a descriptor (captured)
            faulthandler.enable()
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
