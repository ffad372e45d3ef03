"""``robustsim retrieval``: clean, attacked and certified recall@k / mAP of a metric on a retrieval set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from robustsim.cli.options import (
    device_option,
    dtype_option,
    limit_option,
    metric_option,
    out_dir_option,
    overwrite_option,
    parse_names,
    registry_choice,
    restarts_option,
    say,
    seed_option,
    steps_option,
    threat_options,
)
from robustsim.settings import RETRIEVAL_ATTACK
from robustsim.threat import ThreatModel

if TYPE_CHECKING:
    import torch

RETRIEVAL_FILES = ("report.json", "report.md", "report.html", "recall.png", "queries.png")

DEFAULT_EPS = {"l2": "0.5,1", "linf": "1/255,2/255"}


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of integers; write e.g. 1,5,10", param_hint="--k") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter("needs integers >= 1, e.g. 1,5,10", param_hint="--k")
    return ks


@click.command("retrieval")
@metric_option("--metric", required=True, help="Zoo name, a+b ensemble or checkpoint folder.")
@click.option(
    "--data",
    "data_spec",
    default="mini",
    show_default=True,
    help="mini (bundled, synthetic), vsd:ROOT (images/ + pairs.csv: query,candidate,label), "
    "plain:ROOT (queries/, gallery/, positives.csv: query,positive), or a folder of either layout.",
)
@click.option("--k", "k_text", default="1,5,10", show_default=True, help="Comma-separated cut-offs for recall@k.")
@threat_options(
    DEFAULT_EPS,
    targets=("ref",),
    eps_help="Comma-separated radii of the query perturbation (fractions allowed); 0 = clean only.",
    keep_zero=False,
)
@click.option(
    "--attacks",
    "attacks_text",
    default="apgd-ce",
    show_default=True,
    help="Comma-separated attack names (see `robustsim audit --help`); worst case per query.",
)
@steps_option(RETRIEVAL_ATTACK.steps)
@restarts_option
@click.option(
    "--targeted", is_flag=True, default=False, help="Also try to pull a random non-positive item into the top-1."
)
@click.option(
    "--index",
    "backend",
    type=registry_choice("robustsim.retrieval.index", "BACKENDS"),
    default="auto",
    show_default=True,
    help="Top-k search: exact chunked products, faiss IndexFlatIP, or auto (faiss from 50k items).",
)
@seed_option
@out_dir_option("report.json, report.md, report.html, recall.png and queries.png")
@overwrite_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1 << 16), help="Queries per batch.")
@device_option
@limit_option("queries")
@dtype_option
def retrieval_cmd(
    metric: str,
    data_spec: str,
    k_text: str,
    threat: ThreatModel,
    attacks_text: str,
    steps: int,
    restarts: int,
    targeted: bool,
    backend: str,
    seed: int,
    out_dir: Path | None,
    overwrite: bool,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    dtype: str | None,
) -> None:
    """Retrieval under attack: recall@k, mAP and ROC-AUC, attacked and certified.

    Rank a gallery for every query and score against the annotated positives (VSD protocol):
    clean recall@k, mAP and ROC-AUC; recall@k and mAP when an attacker perturbs the query to push
    every positive out of the top k; certified recall@k for metrics with a Lipschitz guarantee.

    Images are loaded at the metric's input size, so radii are in the pixels the network sees.
    """
    from contextlib import nullcontext

    from robustsim.attacks import make_attack
    from robustsim.data import open_retrieval
    from robustsim.io import OutputDir
    from robustsim.reports import write_report
    from robustsim.retrieval import evaluate_retrieval
    from robustsim.retrieval.index import Backend
    from robustsim.retrieval.report import RetrievalReport, retrieval_table
    from robustsim.zoo import load_metric

    ks = parse_ks(k_text)
    attacks = parse_names(attacks_text, "--attacks")
    for a in attacks:  # fail on a bad name before any work
        make_attack(a, threat)
    claim = OutputDir(out_dir, RETRIEVAL_FILES, overwrite) if out_dir else nullcontext(None)
    with claim as out:
        m = load_metric(metric, device=device, dtype=dtype)
        data = open_retrieval(data_spec, size=m.input_size)
        if limit is not None:
            data = data.subset(limit)
        if ks[-1] > data.n_ranked:
            raise click.BadParameter(
                f"k={ks[-1]} exceeds the {data.n_ranked} gallery items ranked per query", param_hint="--k"
            )
        res = evaluate_retrieval(
            m,
            data,
            ks,
            threat,
            attacks,
            steps=steps,
            restarts=restarts,
            targeted=targeted,
            seed=seed,
            batch_size=batch_size,
            device=device,
            backend=cast(Backend, backend),
        )
        say(
            f"retrieval of {m.name} on {res.data}: {res.n_queries} queries ({res.n_scored} with positives), "
            f"{res.n_gallery} gallery items; {res.note}"
        )
        say(retrieval_table(res))
        say(f"({res.seconds:.0f} s)")
        if out is not None:
            for f in write_report(RetrievalReport(res), out):
                say(f"wrote {f}")
