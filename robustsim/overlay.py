"""``robustsim plot``: overlay several audit / certify / retrieval reports, one curve per report.

Reports are validated before plotting (a malformed file is one line naming what is wrong), and the
kind of plot is inferred from them when not given: certify reports -> certified accuracy, audit
reports -> robust accuracy, retrieval reports -> attacked recall@k (``certified`` gives certified
recall@k, where the metric has a certificate).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, TypeGuard

import matplotlib.pyplot as plt

from robustsim.errors import RobustsimError
from robustsim.io import parse_json, read_regular
from robustsim.plots import Curve, accuracy_figure, radius_histogram
from robustsim.threat import MAX_L2, NORMS

Kind = Literal["certified", "robust", "radius"]
KINDS = ("certified", "robust", "radius")
_FILES = ("report.json", "certify.json")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def _numbers(
    value: object, n: int | None = None, nullable: bool = False, low: float = 0.0, high: float = 1.0
) -> TypeGuard[list]:
    """A list (of ``n``) of finite numbers in [low, high] (None allowed where ``nullable``)."""
    if not isinstance(value, list):
        return False

    def ok(v: object) -> bool:
        if v is None:
            return nullable
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high

    return all(ok(v) for v in value) and (n is None or len(value) == n)


def _radii(value: object) -> bool:
    """Radii (l2): finite, at most MAX_L2; -1 marks an abstention."""
    return _numbers(value, low=-1.0, high=MAX_L2)


def _problem(report: dict) -> str | None:
    """What makes ``report`` unusable for plotting (None when it is well formed)."""
    kind = report.get("kind")
    for key in ("metric", "data"):
        if not isinstance(report.get(key), str):
            return f"'{key}' is missing or not a string"
    if report.get("norm", "l2") not in NORMS:
        return f"'norm' is {report.get('norm')!r}, not l2 or linf"
    if kind == "certify":
        curve = report.get("curve")
        if not isinstance(curve, list) or not curve:
            return "'curve' is missing or empty"
        if not all(isinstance(c, dict) and _radii([c.get("eps")]) and _numbers([c.get("certified")]) for c in curve):
            return "'curve' entries need a radius eps and a certified accuracy in [0, 1]"
        triplets = report.get("triplets")
        radii = [t.get("radius") for t in triplets if isinstance(t, dict)] if isinstance(triplets, list) else None
        if radii is None or len(radii) != len(triplets) or not _radii(radii):
            return f"'triplets' entries need a finite radius (at most {MAX_L2:g})"
        return None
    eps = report.get("eps")
    if not _radii(eps) or not eps or min(eps) < 0:
        return f"'eps' is missing or not a list of radii in [0, {MAX_L2:g}]"
    n = len(eps)
    if kind == "audit":
        if not _numbers(report.get("robust"), n, nullable=True):
            return f"'robust' must list {n} accuracies"
        if report.get("certified") is not None and not _numbers(report.get("certified"), n, nullable=True):
            return f"'certified' must be null or list {n} accuracies"
        return None
    if kind == "center-smoothing":
        if not _numbers(report.get("median_bound"), n, nullable=True, high=1e6):
            return f"'median_bound' must list {n} bounds"
        return None
    if kind == "retrieval":
        s = report.get("summary")
        ks = report.get("ks")
        good_ks = bool(ks) and _numbers(ks, low=1, high=1e9)
        if not isinstance(s, dict) or not isinstance(s.get("clean"), dict) or not good_ks:
            return "'summary' or 'ks' is missing"
        for block in ("attacked", "certified"):
            b = s.get(block)
            if b is not None and not (isinstance(b, dict) and all(_numbers(b.get(f"recall@{k}"), n, True) for k in ks)):
                return f"'summary.{block}' must list recall@k per epsilon"
        return None
    return "no 'kind' field naming an audit, certify, center-smoothing or retrieval report"


def load_report(path: str | os.PathLike) -> dict:
    """An audit, certify or retrieval report from its JSON file or from the folder that holds it."""
    from robustsim.checks import user_path

    path = user_path(path, "report")
    if path.is_dir():
        found = [path / f for f in _FILES if os.path.lexists(path / f)]
        if not found:
            raise RobustsimError(f"{path} holds no report.json or certify.json; pass a report file or folder")
        path = found[0]
    if not os.path.exists(path):
        raise RobustsimError(f"report {path} does not exist; pass an audit folder or a certify --json file")
    raw = read_regular(path, "report")  # a FIFO or /dev/zero is refused, never waited on or read without end
    try:
        report = parse_json(raw, path)
    except ValueError as err:
        raise RobustsimError(f"{err}; re-run the audit or certify command") from None
    if not isinstance(report, dict):
        raise RobustsimError(f"{path} is not a robustsim report (a JSON object with a 'kind' field)")
    problem = _problem(report)
    if problem:
        raise RobustsimError(f"{path} is not a usable robustsim report: {problem}")
    report["_path"] = str(path)
    return report


def infer_kind(reports: list[dict]) -> Kind:
    """certified when every report is a certify (or center-smoothing) report, else robust."""
    return "certified" if all(r["kind"] in ("certify", "center-smoothing") for r in reports) else "robust"


def certificate_kind(report: dict) -> str:
    """Which certificate a report's certified numbers are, in a legend's words: a Lipschitz proof, randomized
    smoothing (sigma, n: a certificate of the smoothed metric), center smoothing (a bound on the smoothed output)."""
    if report["kind"] == "center-smoothing":
        return f"center smoothing, sigma {report.get('sigma')}, n {report.get('n')}"
    smoothing = report.get("smoothing") if isinstance(report.get("smoothing"), dict) else None
    if report.get("method") == "smoothing" and smoothing:
        return f"smoothed, sigma {smoothing.get('sigma')}, n {smoothing.get('n')}"
    return "Lipschitz"


def _label(report: dict, all_reports: list[dict], kind: str | None = None) -> str:
    """The metric and data; the certificate's kind for certified curves (never two kinds unnamed in one legend);
    the folder where two reports would read the same."""
    label = f"{report['metric']} ({report['data']})"
    if kind in ("certified", "radius") and report["kind"] in ("certify", "center-smoothing"):
        label += f", {certificate_kind(report)}"
    same = [r for r in all_reports if f"{r['metric']} ({r['data']})" == f"{report['metric']} ({report['data']})"]
    return label if len(same) == 1 else f"{label} [{Path(report['_path']).parent.name}]"


def _retrieval_curves(reports: list[dict], kind: Kind) -> tuple[list[Curve], int]:
    common = set.intersection(*(set(r["ks"]) for r in reports))
    if not common:
        raise RobustsimError("the retrieval reports share no k; plot reports run with a common --k")
    k = min(common)
    curves = []
    for r in reports:
        s, label = r["summary"], _label(r, reports)
        block = s.get("attacked" if kind == "robust" else "certified")
        if block is None:
            what = "was not attacked (eps 0)" if kind == "robust" else "has no certificate"
            raise RobustsimError(
                f"{r['_path']}: {r['metric']} {what}; plot --kind {'certified' if kind == 'robust' else 'robust'}"
            )
        values = [math.nan if v is None else v for v in block[f"recall@{k}"]]
        if kind == "robust":
            curves.append(Curve(label, [0.0, *r["eps"]], [s["clean"][f"recall@{k}"], *values]))
        else:
            curves.append(Curve(label, r["eps"], values))
    return curves, k


def overlay_figure(reports: list[dict], kind: Kind | None = None) -> plt.Figure:
    """One curve (or histogram) per report; ``kind`` None infers it (:func:`infer_kind`).
    Raises RobustsimError when the reports cannot share the figure or lack the quantity."""
    kind = kind or infer_kind(reports)
    if kind == "radius":
        radii = {}
        for r in reports:
            if r["kind"] != "certify":
                raise RobustsimError(f"{r['_path']}: radius histograms need certify reports (robustsim certify --json)")
            radii[_label(r, reports, kind)] = [t["radius"] for t in r["triplets"]]
        return radius_histogram(radii, "certified l2 radius per triplet")
    centre = [r["kind"] == "center-smoothing" for r in reports]
    if any(centre):
        if not all(centre):
            raise RobustsimError("center-smoothing bounds (metric units) cannot share a figure with accuracies")
        curves = [Curve(_label(r, reports, kind), r["eps"], [math.nan if v is None else v for v in r["median_bound"]])
                  for r in reports]  # fmt: skip
        title = "median certified bound on the smoothed output's move vs l2 epsilon"
        return accuracy_figure(curves, "l2", title, ylabel="median bound (metric units)", percent=False)
    norms = {r.get("norm", "l2") for r in reports}
    if len(norms) > 1:
        raise RobustsimError(f"the reports mix norms ({', '.join(sorted(norms))}); plot one norm at a time")
    norm = norms.pop()
    retrieval = [r["kind"] == "retrieval" for r in reports]
    if any(retrieval):
        if not all(retrieval):
            raise RobustsimError("retrieval reports (recall) cannot share a figure with 2AFC reports; plot them apart")
        curves, k = _retrieval_curves(reports, kind)
        title = f"{'attacked' if kind == 'robust' else 'certified'} recall@{k} vs {norm} epsilon"
        return accuracy_figure(curves, norm, title, ylabel=f"{kind} recall@{k} (%)")
    curves = []
    for r in reports:
        label = _label(r, reports, kind)
        if r["kind"] == "certify":
            if kind == "robust":
                raise RobustsimError(f"{r['_path']} is a certify report; --kind robust needs audit reports")
            curves.append(Curve(label, [c["eps"] for c in r["curve"]], [c["certified"] for c in r["curve"]]))
        elif kind == "robust":
            curves.append(Curve(label, r["eps"], [math.nan if v is None else v for v in r["robust"]]))
        else:
            if r.get("certified") is None:
                raise RobustsimError(f"{r['_path']}: {r['metric']} has no certificate; use --kind robust")
            curves.append(Curve(label, r["eps"], [math.nan if v is None else v for v in r["certified"]]))
    title = f"{'certified' if kind == 'certified' else 'robust'} 2AFC accuracy vs {norm} epsilon"
    return accuracy_figure(curves, norm, title, ylabel=f"{kind} 2AFC accuracy (%)")
