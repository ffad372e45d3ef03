"""``robustsim bench``: every requested metric under one standard protocol, cell by cell, resumable.

A *cell* is one number's worth of work for one metric: its clean 2AFC, its robust 2AFC at one threat
model and epsilon, or its certified 2AFC at one radius. Each cell is saved atomically as soon as it is
computed, under a key hashing the protocol, the data's content and the metric's weights; a re-run reuses
exactly the cells whose key still matches and computes the rest, so a killed run continues where it
stopped and nothing stale is ever reused. (An attack computes all epsilons of a threat model in one run,
the balls nesting, so a resumed run repeats at most that one attack run.)

Under torchrun every rank attacks its share of the triplets and rank 0 gathers them and writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustsim.bench.protocol import Protocol, get_protocol
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, broadcast_object, init_distributed
from robustsim.errors import RobustsimError
from robustsim.io import write_json
from robustsim.metrics.base import Metric

#: published figures, shown beside ours on the cards (science.md section 7; NIGHTS, not mini)
REPORTED = {
    "dreamsim": {
        "NIGHTS 2AFC (DreamSim README)": 96.2,
        "NIGHTS clean / linf 4/255 / l2 3.0 (Croce et al. 2024)": [96.2, 0.5, 0.9],
    },
    "dino-vitb16": {"NIGHTS 2AFC (DreamSim README)": 94.8},
    "clip-vitb16": {"NIGHTS 2AFC (DreamSim README)": 93.6},
    "openclip-vitb16": {"NIGHTS 2AFC (DreamSim README)": 95.3},
    "lipsim-small-pretrained": {"NIGHTS clean / linf 4/255 / l2 3.0 (Croce et al. 2024)": [86.6, 8.6, 26.5]},
    "lipsim-small-m0.5": {
        "NIGHTS clean / linf 4/255 / l2 3.0 (Croce et al. 2024)": [85.1, 32.8, 53.1],
        "BAPPS clean / certified 36, 72, 108 /255 (LipSim paper)": [74.3, 31.2, 15.1, 6.8],
    },
    "r-lpips": {"NIGHTS clean / linf 4/255 / l2 3.0 (Croce et al. 2024)": [71.6, 16.2, 26.9]},
}


def metric_fingerprint(metric: Metric) -> str:
    """A hash of the metric's name, class and every byte of its weights and buffers."""
    h = hashlib.sha256(f"{metric.name}|{type(metric).__qualname__}".encode())
    for name, t in metric.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass
class CellStore:
    """Cells of one benchmark folder: ``cells/<metric>/<cell>.json`` holding {key, result}."""

    root: Path

    def _path(self, metric: str, cell: str) -> Path:
        return self.root / "cells" / metric / f"{cell}.json"

    def get(self, metric: str, cell: str, key: str) -> dict | None:
        try:
            data = json.loads(self._path(metric, cell).read_text())
        except (OSError, ValueError):
            return None
        return data.get("result") if isinstance(data, dict) and data.get("key") == key else None

    def put(self, metric: str, cell: str, key: str, result: dict) -> None:
        write_json(self._path(metric, cell), {"key": key, "cell": cell, "result": result})


@dataclass
class MetricRun:
    """What the bench knows of one metric while it runs."""

    name: str
    metric: Metric
    fingerprint: str
    cells: dict = field(default_factory=dict)


def _key(protocol: Protocol, data: TripletDataset, fp: str, cell: str, extra: object = None) -> str:
    blob = json.dumps([protocol.digest(), data.identity, fp, cell, extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def clean_cell(metric: Metric, data: TripletDataset, batch_size: int, device, env: DistEnv) -> dict | None:
    from robustsim.evaluate import evaluate_2afc

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
    metric: Metric, data: TripletDataset, protocol: Protocol, tm, eps, batch_size: int, device, progress: bool, env
) -> dict | None:
    """The audit report of ``metric`` under the protocol's attacks, steps and restarts at threat model ``tm``'s
    norm and target and the radii ``eps`` (None on ranks other than 0)."""
    from robustsim.audit import run_audit

    report, _ = run_audit(
        metric,
        data,
        tm.norm,
        eps,
        protocol.attacks,
        steps=protocol.steps,
        restarts=protocol.restarts,
        batch_size=batch_size,
        device=device,
        target=tm.target,
        progress=progress,
        env=env,
    )
    return report


def robust_cells(
    metric: Metric, data: TripletDataset, protocol: Protocol, tm, batch_size: int, device, env: DistEnv, progress: bool
) -> dict | None:
    t0 = time.perf_counter()
    report = protocol_audit(metric, data, protocol, tm, tm.eps, batch_size, device, progress, env)
    secs = time.perf_counter() - t0
    if report is None:
        return None
    out = {}
    for i, e in enumerate(report["eps"]):
        out[e] = {
            "robust": report["robust"][i],
            "clean": report["clean"],
            "n": report["n"],
            "seconds": secs,
            "images_per_s": report["n"] * (protocol.steps + 1) / max(secs, 1e-9),
            "per_triplet": report["per_triplet"]["robust"][i],
            "certified_here": report["certified"][i] if report["certified"] is not None else None,
        }
    return out


def certified_cells(
    metric: Metric,
    data: TripletDataset,
    protocol: Protocol,
    smoothing: float | None,
    batch_size: int,
    device,
    env: DistEnv,
) -> tuple[str, dict] | None:
    """("lipschitz" | "smoothing", {eps: cell}) or None when the metric has no certificate here."""
    from robustsim.certify import certify_2afc, certify_smoothed
    from robustsim.certify.lipschitz import network_lipschitz

    eps = list(protocol.certified_eps)
    t0 = time.perf_counter()
    try:
        network_lipschitz(metric)
        method, res = (
            "lipschitz",
            certify_2afc(metric, data, eps, batch_size=batch_size, device=device, progress=False, env=env),
        )
    except RobustsimError:
        if smoothing is None:
            return ("none", {})
        from robustsim.dist import gather_rows, shard

        share, mine = shard(data, env)
        method = f"smoothing sigma={smoothing:g}"
        res = certify_smoothed(
            metric,
            share,
            eps,
            smoothing,
            n=protocol.smoothing["n"],
            alpha=protocol.smoothing["alpha"],
            device=device,
            progress=False,
        )
        if env.world > 1:
            parts = [gather_rows(t, mine, len(data), env) for t in (res.radius, res.clean, res.p)]
            if not env.main:
                return None
            res.radius, res.clean, res.p = parts  # type: ignore[assignment]
    if res is None:
        return None
    secs = time.perf_counter() - t0
    return method, {e: {"certified": res.certified_at(e), "clean": res.clean_score, "seconds": secs} for e in eps}


def evaluate_metric(
    run: MetricRun,
    data: TripletDataset,
    protocol: Protocol,
    store: CellStore,
    smoothing: float | None,
    batch_size: int,
    device,
    env: DistEnv,
    progress: bool,
    log,
) -> dict | None:
    """Fill every cell of one metric (reusing saved ones); on rank 0 return its cells."""
    m, fp = run.metric, run.fingerprint
    key = _key(protocol, data, fp, "clean")
    cell = store.get(run.name, "clean", key) if env.main else None
    cell = broadcast_object(cell, env)
    if cell is None:
        log(f"{run.name}: clean 2AFC")
        cell = clean_cell(m, data, batch_size, device, env)
        if env.main:
            store.put(run.name, "clean", key, cell)
    run.cells["clean"] = cell
    for tm in protocol.threat_models:
        names = {e: f"robust-{tm.key()}-{e:.6g}" for e in tm.eps}
        keys = {e: _key(protocol, data, fp, n) for e, n in names.items()}
        saved = {e: store.get(run.name, names[e], keys[e]) for e in tm.eps} if env.main else {}
        saved = broadcast_object(saved, env)
        if any(v is None for v in saved.values()):
            log(f"{run.name}: robust {tm.describe()}")
            cells = robust_cells(m, data, protocol, tm, batch_size, device, env, progress)
            if env.main:
                for e in tm.eps:
                    store.put(run.name, names[e], keys[e], cells[e])  # type: ignore[index]
                saved = cells  # type: ignore[assignment]
        for e in tm.eps:
            run.cells[names[e]] = saved[e] if env.main else None
    cert_names = {e: f"certified-l2-{e:.6g}" for e in protocol.certified_eps}
    extra = {"smoothing": smoothing}
    keys = {e: _key(protocol, data, fp, n, extra) for e, n in cert_names.items()}
    saved = {e: store.get(run.name, cert_names[e], keys[e]) for e in protocol.certified_eps} if env.main else {}
    saved = broadcast_object(saved, env)
    if any(v is None for v in saved.values()):
        log(f"{run.name}: certificates")
        out = certified_cells(m, data, protocol, smoothing, batch_size, device, env)
        if env.main and out is not None:
            method, cells = out
            for e in protocol.certified_eps:
                cell = {"method": method, **cells[e]} if cells else {"method": method}
                store.put(run.name, cert_names[e], keys[e], cell)
                saved[e] = cell
    for e in protocol.certified_eps:
        run.cells[cert_names[e]] = saved.get(e) if env.main else None
    return run.cells if env.main else None


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
) -> dict | None:
    """Benchmark ``metrics`` (zoo names, checkpoint paths; ``["all"]`` = every metric that can run here) on the
    2AFC spec ``data``; write cards, leaderboard and figure into ``out``. Returns {metric: card, "_skipped":
    {metric: reason}} on rank 0 (None on other ranks)."""
    from robustsim.bench.cards import make_card, write_leaderboard
    from robustsim.data import open_triplets
    from robustsim.metrics import load_metric, metric_entries

    proto = get_protocol(protocol)
    env = init_distributed(torch.device(device))
    out = Path(out)
    n = min(x for x in (limit, proto.limit) if x is not None) if (limit or proto.limit) else None
    triplets = open_triplets(data, limit=n)
    store = CellStore(out)
    if metrics == ["all"]:
        metrics = [e.name for e in metric_entries() if e.weights_available()]
    cards, skipped = {}, {}
    say = log if env.main else (lambda *a, **k: None)
    say(proto.describe())
    for name in metrics:
        try:
            metric = load_metric(name, device=env.device)
        except (RobustsimError, ImportError, OSError) as err:
            skipped[name] = str(err).splitlines()[0]
            say(f"{name}: skipped ({skipped[name]})")
            continue
        runner = MetricRun(name, metric, metric_fingerprint(metric))
        t0 = time.perf_counter()
        cells = evaluate_metric(runner, triplets, proto, store, smoothing, batch_size, env.device, env, progress, say)
        if env.main and cells is not None:
            cards[name] = make_card(
                name,
                metric,
                runner.fingerprint,
                cells,
                proto,
                data,
                triplets,
                REPORTED.get(name, {}),
                time.perf_counter() - t0,
            )
            write_json(out / "cards" / f"{name}.json", cards[name])
        del metric
    if not env.main:
        return None
    write_leaderboard(cards, skipped, proto, data, out)
    return {**cards, "_skipped": skipped}


def benchmark(
    metric: Metric | str,
    data: TripletDataset | str = "mini",
    threat_model: str = "l2",
    eps: float | list[float] = 0.5,
    protocol: str = "quick",
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[float, float | list[float]]:
    """RobustBench's one verb for a perceptual metric: (clean 2AFC, robust 2AFC) under the protocol's attacks
    with the reference perturbed in a ``threat_model`` ("l2" / "linf", or a ThreatModel) ball of ``eps``."""
    from robustsim.data import open_triplets
    from robustsim.metrics import load_metric
    from robustsim.threat import ThreatModel

    proto = get_protocol(protocol)
    m = load_metric(metric, device=device) if isinstance(metric, str) else metric
    d = open_triplets(data, limit=proto.limit) if isinstance(data, str) else data
    tm = threat_model if isinstance(threat_model, ThreatModel) else ThreatModel(threat_model, "ref")
    eps_list = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    report = protocol_audit(m, d, proto, tm, eps_list, batch_size, device, False, None)
    robust = report["robust"]
    return report["clean"], robust if isinstance(eps, (list, tuple)) else robust[0]
