"""``robustsim plot``: overlay several audit / certify reports, one curve per metric or checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt

from robustsim.errors import RobustsimError
from robustsim.plots import Curve, accuracy_figure, radius_histogram

Kind = Literal["certified", "robust", "radius"]
_FILES = ("report.json", "certify.json")


def load_report(path: str | os.PathLike) -> dict:
    """An audit or certify report from its JSON file or from the folder that holds it."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in _FILES if (path / f).is_file()]
        if not found:
            raise RobustsimError(f"{path} holds no report.json or certify.json; pass a report file or folder")
        path = found[0]
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise RobustsimError(f"report {path} does not exist; pass an audit folder or a certify --json file") from None
    except json.JSONDecodeError as err:
        raise RobustsimError(f"{path} is not valid JSON ({err.msg}); re-run the audit or certify command") from None
    if not isinstance(report, dict) or report.get("kind") not in ("audit", "certify"):
        raise RobustsimError(f"{path} is not a robustsim audit or certify report (no 'kind' field)")
    report["_path"] = str(path)
    return report


def _label(report: dict, all_reports: list[dict]) -> str:
    label = f"{report['metric']} ({report['data']})"
    same = [r for r in all_reports if f"{r['metric']} ({r['data']})" == label]
    return label if len(same) == 1 else f"{label} [{Path(report['_path']).parent.name}]"


def overlay_figure(reports: list[dict], kind: Kind) -> plt.Figure:
    """One curve (or histogram) per report; raises RobustsimError when a report lacks the quantity."""
    if kind == "radius":
        radii = {}
        for r in reports:
            if r["kind"] != "certify":
                raise RobustsimError(f"{r['_path']}: radius histograms need certify reports (robustsim certify --json)")
            radii[_label(r, reports)] = [t["radius"] for t in r["triplets"]]
        return radius_histogram(radii, "certified l2 radius per triplet")
    norms = {r.get("norm", "l2") for r in reports}
    if len(norms) > 1:
        raise RobustsimError(f"the reports mix norms ({', '.join(sorted(norms))}); plot one norm at a time")
    norm = norms.pop()
    curves = []
    for r in reports:
        label = _label(r, reports)
        if r["kind"] == "certify":
            if kind == "robust":
                raise RobustsimError(f"{r['_path']} is a certify report; --kind robust needs audit reports")
            curves.append(Curve(label, [c["eps"] for c in r["curve"]], [c["certified"] for c in r["curve"]]))
        elif kind == "robust":
            curves.append(Curve(label, r["eps"], r["robust"]))
        else:
            if r.get("certified") is None:
                raise RobustsimError(f"{r['_path']}: {r['metric']} has no certificate; use --kind robust")
            curves.append(Curve(label, r["eps"], r["certified"]))
    title = f"{'certified' if kind == 'certified' else 'robust'} 2AFC accuracy vs {norm} epsilon"
    return accuracy_figure(curves, norm, title, ylabel=f"{kind} 2AFC accuracy (%)")
