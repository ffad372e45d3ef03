"""``robustsim bench``: every requested metric under one standard protocol, cell by cell, resumable.

A *cell* (:class:`Cell`) is one number's worth of work for one metric: its clean 2AFC, its robust 2AFC at one
threat model and epsilon, or its certified 2AFC at one radius. Each cell is saved atomically as soon as it is
computed, under a key hashing the protocol, the data's content and the metric's weights; a re-run reuses
exactly the cells whose key still matches and computes the rest (:meth:`CellStore.fill`), so a killed run
continues where it stopped and nothing stale is ever reused. (An attack computes all epsilons of a threat
model in one run, the balls nesting, so a resumed run repeats at most that one attack run.)

Under torchrun every rank attacks its share of the triplets and rank 0 gathers them and writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import torch

from robustsim.bench.protocol import Cell, Protocol, get_protocol, protocol_cells
from robustsim.checks import count_arg
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, broadcast_object, init_distributed
from robustsim.errors import InputError, RobustsimError, UntrustedState
from robustsim.io import finite_json, parse_json, read_inside, write_json
from robustsim.metrics.base import Metric
from robustsim.precision import Precision, resolve_precision
from robustsim.provenance import metric_fingerprint
from robustsim.settings import BENCH_CENTER, BENCH_CENTER_IMAGES
from robustsim.text import file_stem, visible
from robustsim.threads import follow_machine
from robustsim.threat import ThreatModel

NUMBERS = ("score", "robust", "certified", "seconds", "images_per_s", "n", "center_bound")
SET_BY_RUN = ("sigma", "alpha")  # a bench's center smoothing takes --smoothing's sigma and the protocol's alpha
# center smoothing in certified cells of metrics without a Lipschitz bound (bench --smoothing), sized for a CPU:
# the first `images` reference images, `n` certification draws, `n_center` draws per check of the centre
CENTER = {"images": BENCH_CENTER_IMAGES, **{k: v for k, v in BENCH_CENTER.to_json().items() if k not in SET_BY_RUN}}


def result_digest(result: object) -> str:
    """sha256 of a cell result's canonical JSON: a hand-edited or damaged cell no longer matches it."""
    text = json.dumps(finite_json(result), sort_keys=True, allow_nan=False, default=str)  # as write_json stores it
    return hashlib.sha256(text.encode()).hexdigest()


FRACTIONS = ("score", "robust", "certified", "clean", "certified_here")


def cell_problem(data: object) -> str | None:
    """Why a saved cell cannot be reused (None when it can): not a cell record, a result whose numbers are not
    numbers or out of their range (accuracies in [0, 1], counts and times >= 0), per-triplet rows that do not add up
    to the summary, certified <= robust <= clean broken, or a result that is not the one its checksum was taken of
    (the checksum is no secret: the other checks are what stop a re-signed forgery)."""
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        return "is not a cell record"
    result = data["result"]
    for k in (*NUMBERS, "clean", "certified_here"):
        v = result.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"holds {k}={v!r}, not a finite number"
        if v < 0 or (k in FRACTIONS and v > 1):
            return f"holds {k}={v!r}, out of its range"
    problem = _rows_problem(result)
    if problem is not None:
        return problem
    order = [result.get(k) for k in ("certified_here", "robust", "clean")]
    known = [v for v in order if v is not None]
    if any(a > b + 1e-9 for a, b in zip(known, known[1:], strict=False)):
        return "breaks certified <= robust <= clean"
    if data.get("sha256") != result_digest(result):
        return "does not match its checksum (edited or damaged)"
    return None


def _rows_problem(result: dict) -> str | None:
    """The per-triplet rows against the summary: each in [0, 1], and their sum over the n counted triplets equals
    the score (clean, rows rounded to 4 digits) or the robust accuracy."""
    rows, n = result.get("per_triplet"), result.get("n")
    if rows is None:
        return None
    if not isinstance(rows, list) or not isinstance(n, int) or len(rows) < n or n < 1:
        return "holds per-triplet rows that do not match its n"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in rows):
        return "holds per-triplet rows out of [0, 1]"
    summary, tol = (result["robust"], 1e-9) if "robust" in result else (result.get("score"), 1e-4)
    if summary is not None and abs(sum(rows) / n - summary) > tol:
        return "holds per-triplet rows that do not add up to its summary"
    return None


@dataclass
class CellStore:
    """Cells of one benchmark folder: ``cells/<metric>/<cell>.json`` holding {key, result}."""

    root: Path
    protocol: Protocol
    data: TripletDataset
    env: DistEnv

    def _path(self, metric: str, cell: Cell) -> Path:
        """``cells/<metric's file stem>/<cell>.json`` (a metric named by a path never leaves the folder)."""
        return self.root / "cells" / file_stem(metric) / f"{cell.name}.json"

    def key(self, fingerprint: str, cell: Cell, extra: object = None) -> str:
        blob = json.dumps(
            [self.protocol.digest(), self.data.identity, fingerprint, cell.name, extra], sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, metric: str, cell: Cell, key: str, warn: bool = True) -> dict | None:
        """The saved result when its key matches and it is intact (its checksum and schema hold); an invalid
        cell is recomputed, with one warning line (``warn=False``: none, for a look that computes nothing)."""
        path = self._path(metric, cell)
        try:
            raw = read_inside(self.root, path)  # a planted link is refused, a FIFO never read
        except UntrustedState as err:
            if warn:
                print(visible(f"warning: {err}; recomputing it"), file=sys.stderr)
            return None
        if raw is None:
            return None
        try:
            data = parse_json(raw, path)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("key") != key:
            return None  # another protocol, data or weights: not this cell
        problem = cell_problem(data)
        if problem is not None:
            if warn:
                print(visible(f"warning: {path} {problem}; recomputing it"), file=sys.stderr)
            return None
        return data["result"]

    def saved(self, metric: str, fingerprint: str, cells: Sequence[Cell], extra: object = None) -> bool:
        """True when every one of ``cells`` is saved under its key (:meth:`fill` would compute nothing)."""
        return all(self.get(metric, c, self.key(fingerprint, c, extra), warn=False) is not None for c in cells)

    def put(self, metric: str, cell: Cell, key: str, result: dict) -> None:
        record = {"key": key, "cell": cell.name, "result": result, "sha256": result_digest(result)}
        write_json(self._path(metric, cell), record, within=self.root)

    def fill(
        self,
        metric: str,
        fingerprint: str,
        cells: Sequence[Cell],
        compute: Callable[[], dict[Cell, dict] | None],
        extra: object = None,
    ) -> dict[Cell, dict | None]:
        """The results of ``cells``: the saved ones whose key matches (rank 0 reads, every rank learns), else
        ``compute()`` for all of them (every rank: it may shard), saved by rank 0 as it returns. Other ranks
        get None for each cell."""
        keys = {c: self.key(fingerprint, c, extra) for c in cells}
        saved = {c: self.get(metric, c, keys[c]) for c in cells} if self.env.main else {}
        saved = cast(dict, broadcast_object(saved, self.env))  # rank 0's dict, on every rank
        if all(saved.get(c) is not None for c in cells):
            return saved if self.env.main else dict.fromkeys(cells)
        computed = compute()
        if not self.env.main or computed is None:
            return dict.fromkeys(cells)
        for c in cells:
            self.put(metric, c, keys[c], computed[c])
        return {c: computed[c] for c in cells}


def clean_cell(metric: Metric, data: TripletDataset, batch_size: int, device, env: DistEnv) -> dict | None:
    from robustsim.score2afc import evaluate_2afc

    t0 = time.perf_counter()
    res = evaluate_2afc(metric, data, batch_size=batch_size, device=device, progress=False, env=env)
    secs = time.perf_counter() - t0
    if res is None:
        return None
    return {
        "score": res.score,
        "n": len(res.p),
        "seconds": secs,
        "images_per_s": 3 * len(res.p) / max(secs, 1e-9),
        "per_triplet": [round(float(v), 4) for v in res.per_triplet],
    }


def protocol_audit(
    metric: Metric,
    data: TripletDataset,
    protocol: Protocol,
    threat: ThreatModel,
    batch_size: int,
    device,
    progress: bool,
    env: DistEnv | None,
    precision: Precision = "fp32",
    clean=None,
):
    """The audit report of ``metric`` under the protocol's attacks, steps and restarts at ``threat`` (None on
    ranks other than 0); ``precision``: the attack steps' autocast (decisions and re-checks stay float32)."""
    from robustsim.audit import run_audit

    return run_audit(
        metric,
        data,
        threat,
        protocol.attacks,
        steps=protocol.steps,
        restarts=protocol.restarts,
        batch_size=batch_size,
        device=device,
        progress=progress,
        env=env,
        precision=precision,
        clean=clean,
    )


def robust_cells(
    metric: Metric,
    data: TripletDataset,
    protocol: Protocol,
    cells: list[Cell],
    batch_size: int,
    device,
    env: DistEnv,
    progress: bool,
    precision: Precision = "fp32",
    clean=None,
) -> dict[Cell, dict] | None:
    """One attack run over the radii of ``cells`` (one threat model); ``clean``: the metric's clean embeddings,
    shared over its threat models."""
    threat = cells[0].threat
    assert threat is not None
    t0 = time.perf_counter()
    report = protocol_audit(metric, data, protocol, threat, batch_size, device, progress, env, precision, clean)
    secs = time.perf_counter() - t0
    if report is None:
        return None
    out = {}
    for i, cell in enumerate(cells):
        out[cell] = {
            "robust": report.robust[i],
            "clean": report.clean,
            "n": report.n,
            "seconds": secs,
            "images_per_s": report.n * (protocol.steps + 1) / max(secs, 1e-9),
            "per_triplet": report.per_triplet["robust"][i],
            "certified_here": report.certified[i] if report.certified is not None else None,
        }
    return out


def certified_cells(
    metric: Metric,
    data: TripletDataset,
    protocol: Protocol,
    cells: list[Cell],
    smoothing: float | None,
    batch_size: int,
    device,
    env: DistEnv,
) -> dict[Cell, dict] | None:
    """Every certified cell: a Lipschitz proof where the metric has one, else smoothing (when asked), else a
    cell saying there is no certificate."""
    from robustsim.certify import certify_2afc, certify_center, certify_smoothed, has_certificate

    eps = ThreatModel("l2", "ref", tuple(c.eps for c in cells if c.eps is not None))
    t0 = time.perf_counter()
    centre = None
    if has_certificate(metric):
        method = "lipschitz"
        res = certify_2afc(metric, data, eps, batch_size=batch_size, device=device, progress=False, env=env)
    elif smoothing is None:
        return {c: {"method": "none"} for c in cells}
    else:
        method = f"smoothing sigma={smoothing:g}"
        n, alpha = protocol.smoothing["n"], protocol.smoothing["alpha"]
        res = certify_smoothed(metric, data, eps, smoothing, n=n, alpha=alpha, device=device, progress=False, env=env)
        first = data.select(list(range(min(BENCH_CENTER_IMAGES, len(data)))))
        settings = replace(BENCH_CENTER, sigma=smoothing, alpha=alpha).to_json()
        centre = certify_center(metric, first, eps, **settings, device=device, progress=False, env=env)
    if res is None or (centre is None and method != "lipschitz"):
        return None
    secs = time.perf_counter() - t0
    out = {
        c: {"method": method, "certified": res.certified_at(c.eps), "clean": res.clean_score, "seconds": secs}
        for c in cells
        if c.eps is not None
    }
    if method != "lipschitz":  # what a smoothing certificate is of (its samples, confidence and abstentions), and
        assert centre is not None  # the median center bound over the images that did not abstain (inf -> None)
        for c, v in out.items():
            v.update(n=protocol.smoothing["n"], alpha=protocol.smoothing["alpha"])
            v["abstain_rate"] = res.details.get("abstain_rate")
            b = centre.median_bound(c.eps)
            v.update(center_bound=b if math.isfinite(b) else None, center_images=len(centre.abstain))
            v["center_abstain_rate"] = centre.abstain_rate
    return out


@dataclass
class MetricRun:
    """What the bench knows of one metric while it runs."""

    name: str
    metric: Metric
    fingerprint: str
    cells: dict[str, dict | None] = field(default_factory=dict)


def evaluate_metric(
    run: MetricRun,
    store: CellStore,
    smoothing: float | None,
    batch_size: int,
    device,
    progress: bool,
    log,
    precision: Precision = "fp32",
    reuse: bool = True,
) -> dict[str, dict | None] | None:
    """Fill every cell of one metric (reusing saved ones); on rank 0 return them by cell name. ``reuse``: embed the
    clean images once for all its attack cells (the same numbers, fewer forwards)."""
    from robustsim.attacks.twoafc import CleanEmbeddings

    m, data, protocol, env = run.metric, store.data, store.protocol, store.env
    embedded = CleanEmbeddings() if reuse else None
    clean, robust, certified = protocol_cells(protocol)

    def announce(what: str, compute: Callable[[], dict[Cell, dict] | None]):
        def wrapped():
            threads = follow_machine()  # the machine's load may have changed since the last cell
            log(f"{run.name}: {what} ({threads} thread{'s' if threads > 1 else ''})")
            return compute()

        return wrapped

    def clean_compute() -> dict[Cell, dict] | None:
        cell = clean_cell(m, data, batch_size, device, env)
        return None if cell is None else {clean[0]: cell}

    robust_extra, certified_extra = cell_extras(precision, smoothing)
    found = store.fill(run.name, run.fingerprint, clean, announce("clean 2AFC", clean_compute))
    for cells in robust:
        threat = cells[0].threat
        assert threat is not None
        compute = announce(
            f"robust {threat.describe()}",
            lambda cells=cells: robust_cells(
                m, data, protocol, cells, batch_size, device, env, progress, precision, embedded
            ),
        )
        found.update(store.fill(run.name, run.fingerprint, cells, compute, extra=robust_extra))
    compute = announce(
        "certificates", lambda: certified_cells(m, data, protocol, certified, smoothing, batch_size, device, env)
    )
    found.update(store.fill(run.name, run.fingerprint, certified, compute, extra=certified_extra))
    run.cells = {c.name: v for c, v in found.items()}
    return run.cells if env.main else None


def cell_extras(precision: str, smoothing: float | None) -> tuple[object, object]:
    """What keys the robust and the certified cells besides protocol, data and weights: a mixed-precision attack
    is another cell (float32 cells keep their keys); a smoothed certificate's sigma and center settings."""
    robust = None if precision == "fp32" else {"precision": precision}
    certified = {"smoothing": smoothing} if smoothing is None else {"smoothing": smoothing, "center": CENTER}
    return robust, certified


def metric_estimate(
    run: MetricRun, store: CellStore, smoothing: float | None, batch_size: int, device, precision: str = "fp32"
):
    """What a metric's cells not yet saved in ``store`` cost (:mod:`robustsim.cost`): the clean pass, each threat
    model's attacks (a trial run on a few triplets, scaled), and the certificate (a Lipschitz proof, or smoothing
    and center smoothing); None when every cell is saved (nothing to compute)."""
    from robustsim.attacks.registry import make_attack
    from robustsim.certify import has_certificate
    from robustsim.cost import (
        CALIBRATION,
        Estimate,
        attack_passes,
        certificate_seconds,
        figure_seconds,
        time_images,
        time_triplets,
        trial_seconds,
        trial_size,
    )

    metric, data, protocol = run.metric, store.data, store.protocol
    clean, robust, certified = protocol_cells(protocol)
    robust_extra, certified_extra = cell_extras(precision, smoothing)
    saved = lambda cells, extra=None: store.saved(run.name, run.fingerprint, cells, extra)  # noqa: E731
    todo = [cells[0].threat for cells in robust if not saved(cells, robust_extra)]
    clean_todo, certified_todo = not saved(clean), not saved(certified, certified_extra)  # each cell file read once
    n = len(data)
    forwards, backwards, noisy, seconds = 0.0, 0.0, 0.0, 0.0
    if not (clean_todo or todo or certified_todo):
        return None
    times = time_triplets(metric, data, batch_size, device)  # one calibration for all the metric's cells
    if clean_todo:
        forwards, seconds = n, n * times[0]
    built = [[make_attack(a, tm, steps=protocol.steps, restarts=protocol.restarts) for a in protocol.attacks]
             for tm in todo]  # fmt: skip
    for tm, attacks in zip(todo, built, strict=True):
        f, b = attack_passes(n, tm.eps, attacks)
        forwards, backwards = forwards + f, backwards + b
    if todo:
        seconds += trial_seconds(metric, data, todo, built, batch_size, device, times)
    if certified_todo and has_certificate(metric):
        forwards, seconds = forwards + 2 * n, seconds + certificate_seconds(metric, data, batch_size, device, times)
    elif certified_todo and smoothing is not None:
        t = time_images(metric, data, 8 * CALIBRATION, device)
        images = min(BENCH_CENTER_IMAGES, n) * BENCH_CENTER.passes()
        noisy = n * protocol.smoothing["n"] + images
        seconds += noisy * t
    seconds += figure_seconds()  # its card page's figure, drawn whether or not its cells were saved
    units = ("triplet", "noisy image") if noisy else ("triplet",)
    trial = (trial_size(n), n) if todo and trial_size(n) else None
    return Estimate(forwards + noisy, backwards, seconds, str(device), units, trial)


def _checked_metrics(metrics: object) -> list[str]:
    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, Sequence):
        raise InputError(f"metrics must be a list of names, got {metrics!r}; pass e.g. ['l2', 'lipsim-nano']")
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise InputError(f"metrics must be a non-empty list of names, got {metrics!r}")
    return list(metrics)


def run(
    metrics: list[str],
    data: str,
    out: str | Path,
    protocol: str = "quick",
    smoothing: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log=print,
    limit: int | None = None,
    dry_run: bool = False,
    precision: str = "fp32",
    reuse: bool = True,
    dtype: str | None = None,
) -> dict | None:
    """Benchmark ``metrics`` (zoo names, checkpoint paths; ``["all"]`` = every metric that can run here) on the
    2AFC spec ``data``; write cards, leaderboard and figure into ``out``. Returns {metric: card, "_skipped":
    {metric: reason}} on rank 0 (None on other ranks). Each metric's estimated cost is logged before its cells;
    ``dry_run`` stops there (nothing written; the result holds "_estimate"). ``precision`` (fp32, bf16, fp16 or
    auto: bf16 on a CUDA device that has it): the attack steps' autocast; every decision stays in the metric's
    ``dtype`` (None: each metric's own deployment; float32, float64 or adaptive: robustsim.load_metric's)."""
    from robustsim.bench.cards import make_card, write_card_page, write_leaderboard
    from robustsim.data import open_triplets
    from robustsim.zoo import load_metric, metric_entries

    metrics = _checked_metrics(metrics)
    if not isinstance(out, (str, Path)) or not str(out):
        raise InputError(f"out must be a folder path, got {out!r}")
    count_arg(limit, "limit", allow_none=True)
    if smoothing is not None and not (
        isinstance(smoothing, (int, float)) and math.isfinite(smoothing) and smoothing > 0
    ):
        raise InputError(f"smoothing must be a positive sigma or None, got {smoothing!r}")
    proto = get_protocol(protocol)
    env = init_distributed(torch.device(device))
    precision = resolve_precision(precision, env.device)
    out = Path(out)
    n = min(x for x in (limit, proto.limit) if x is not None) if (limit or proto.limit) else None
    triplets = open_triplets(data, limit=n)
    store = CellStore(out, proto, triplets, env)
    if metrics == ["all"]:
        metrics = [e.name for e in metric_entries() if e.weights_available()]
    cards, skipped = {}, {}
    total = None
    say = log if env.main else (lambda *a, **k: None)
    say(proto.describe())
    for name in metrics:
        try:
            metric = load_metric(name, device=env.device, dtype=dtype)
        except (RobustsimError, ImportError, OSError) as err:
            skipped[name] = str(err).splitlines()[0]
            say(f"{name}: skipped ({skipped[name]})")
            continue
        runner = MetricRun(name, metric, metric_fingerprint(metric))
        est = metric_estimate(runner, store, smoothing, batch_size, env.device, precision)
        say(f"{name}: {'every cell saved: nothing to compute' if est is None else est.describe()}")
        if est is not None:
            total = est if total is None else total + est
        if dry_run:
            continue
        t0 = time.perf_counter()
        cells = evaluate_metric(runner, store, smoothing, batch_size, env.device, progress, say, precision, reuse)
        if env.main and cells is not None:
            cards[name] = make_card(
                name, metric, runner.fingerprint, cells, proto, data, triplets, time.perf_counter() - t0
            )
            write_json(out / "cards" / f"{file_stem(name)}.json", cards[name], within=out)
            write_card_page(name, cards[name], proto, out / "cards" / f"{file_stem(name)}.html", within=out)
        del metric
    if not env.main:
        return None
    if total is not None and len(metrics) > 1:
        say(f"all metrics: {total.describe()}")
    if total is not None and total.warning():
        say(f"warning: {total.warning()}")
    if dry_run:
        return {"_skipped": skipped, "_estimate": total}
    write_leaderboard(cards, skipped, proto, data, out)
    return {**cards, "_skipped": skipped}


def benchmark(
    metric: Metric | str,
    data: TripletDataset | str = "mini",
    threat_model: ThreatModel | str = "l2",
    eps: float | Sequence[float] | None = 0.5,
    protocol: str = "quick",
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[float, float | list[float]]:
    """RobustBench's one verb for a perceptual metric: (clean 2AFC, robust 2AFC) under the protocol's attacks,
    as fractions in [0, 1], with the reference perturbed in a ``threat_model`` ball ("l2" / "linf", or a
    ThreatModel, whose radii ``eps=None`` keeps) of radius ``eps`` (a list gives a list)."""
    from robustsim.data import open_triplets
    from robustsim.data.triplets import TripletDataset as _Triplets
    from robustsim.zoo import load_metric

    if not isinstance(metric, (Metric, str)):
        raise InputError(f"metric must be a Metric or a zoo name, got {type(metric).__name__}")
    if not isinstance(data, (_Triplets, str)):
        raise InputError(f"data must be a 2AFC spec such as 'mini' or a TripletDataset, got {type(data).__name__}")
    threat = ThreatModel.of(threat_model, eps)
    if not threat.eps:
        raise InputError("eps must give at least one radius, e.g. eps=0.5 or eps=[0.5, 1.0]")
    proto = get_protocol(protocol)
    m = load_metric(metric, device=device) if isinstance(metric, str) else metric
    d = open_triplets(data, limit=proto.limit) if isinstance(data, str) else data
    report = protocol_audit(m, d, proto, threat, batch_size, device, False, None)
    assert report is not None
    one = isinstance(eps, (int, float)) or (eps is None and len(threat.eps) == 1)
    return report.clean, report.robust[0] if one else report.robust
