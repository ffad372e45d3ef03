"""``robustsim score``: clean 2AFC score of one or more metrics on a triplet set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from robustsim.cli.options import (
    allow_outside_option,
    batch_option,
    check_file_outputs,
    data_option,
    device_option,
    dtype_option,
    file_output_option,
    is_main,
    limit_option,
    load_metrics,
    metric_option,
    open_data,
    parse_names,
    say,
)
from robustsim.table import format_table, pct

if TYPE_CHECKING:
    import torch


@click.command("score")
@metric_option(
    "--metric",
    "metrics",
    many=True,
    default="l2,ssim,ms-ssim,effnet-lite0",
    show_default=True,
    help="Comma-separated zoo names, a+b ensembles or checkpoint paths.",
)
@data_option
@file_output_option("--json", "Write scores to this JSON file.")
@batch_option
@device_option
@limit_option()
@allow_outside_option
@click.option("--groups/--no-groups", default=False, help="Also print per-category scores.")
@dtype_option
def score_cmd(
    metrics: str,
    data_spec: str,
    json: Path | None,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    allow_outside: bool,
    groups: bool,
    dtype: str | None,
) -> None:
    """Clean 2AFC score of one or more metrics on a triplet set."""
    from robustsim.certify.adaptive import decisions, describe
    from robustsim.io import write_json
    from robustsim.score2afc import evaluate_2afc
    from robustsim.threads import runtime_info

    check_file_outputs(json=json)
    names = parse_names(metrics, "--metric")
    data = open_data(data_spec, limit, allow_outside=allow_outside)
    loaded = load_metrics(names, device, dtype)
    results = []
    width = max(len("metric"), *(len(n) for n in names))
    line = lambda *c: f"{c[0]:<{width}}  {c[1]:>5}  {c[2]:>5}  {c[3]:>7}"  # noqa: E731
    if is_main():  # each row as its metric finishes (a slow metric does not hide the fast ones)
        say(f"2AFC score (%) on {data.name}")
        say(line("metric", "2AFC", "n", "seconds"))
        say(line("-" * width, "-" * 5, "-" * 5, "-" * 7))
    for name, metric in zip(names, loaded, strict=True):
        t0 = time.perf_counter()
        res = evaluate_2afc(metric, data, batch_size=batch_size, device=device)
        secs = time.perf_counter() - t0
        if res is None:  # a torchrun rank other than 0: its share went to rank 0
            continue
        results.append(
            {
                "metric": name,
                "score": res.score,
                "n": len(res.p),
                "seconds": secs,
                "groups": res.group_scores(),
                "d0": res.d0.tolist(),
                "d1": res.d1.tolist(),
                "decisions": decisions(metric),
            }
        )
        say(line(name, pct(res.score), len(res.p), f"{secs:.1f}"))
    if not is_main():
        return
    for r in results:
        if describe(r["decisions"]):
            say(f"({r['metric']}: {describe(r['decisions'])})")
    if groups:
        cats = sorted({g for r in results for g in r["groups"]})
        if cats:
            say()
            say(
                format_table(
                    ["metric", *cats], [(r["metric"], *(pct(r["groups"].get(c)) for c in cats)) for r in results]
                )
            )
    if json:
        report = {"version": 1, "kind": "score", "data": data_spec, "runtime": runtime_info(device), "results": results}
        write_json(json, report)
        say(f"wrote {json}")
