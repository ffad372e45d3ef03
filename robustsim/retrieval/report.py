"""Retrieval report: the printed table, report.json / report.md and the two figures (written by
:func:`robustsim.reports.write_report` through :class:`RetrievalReport`)."""

from __future__ import annotations

import torch

from robustsim.certify.adaptive import describe
from robustsim.provenance import package_versions
from robustsim.retrieval.evaluate import RetrievalResult
from robustsim.table import format_table, pct
from robustsim.text import md_code
from robustsim.threads import runtime_info

SCHEMA_VERSION = 2


def retrieval_table(res: RetrievalResult) -> str:
    """Rows: clean, attacked at each epsilon, certified at each epsilon; columns: recall@k, mAP."""
    s = res.summary()
    head = ["", *[f"recall@{k}" for k in res.ks], "mAP"]
    rows = [("clean", *[pct(s["clean"][f"recall@{k}"]) for k in res.ks], pct(s["clean"]["mAP"]))]
    for kind in ("attacked", "certified"):
        block = s[kind]
        if block is None:
            continue
        for i, e in enumerate(res.eps):
            m_ap = pct(block["mAP"][i]) if "mAP" in block else "-"
            rows.append(
                (f"{kind} {res.norm} {res.threat.label(e)}", *[pct(block[f"recall@{k}"][i]) for k in res.ks], m_ap)
            )
    lines = [format_table(head, rows), f"ROC-AUC over labelled pairs: {pct(s['clean']['roc_auc'])}"]
    if s["targeted_success"] is not None:
        pairs = zip(res.eps, s["targeted_success"], strict=True)
        rates = ", ".join(f"{res.threat.label(e)}: {pct(v)}" for e, v in pairs)
        lines.append(f"targeted (random non-positive pulled to top-1) success: {rates}")
    if "median_top1_radius" in s:
        lines.append(f"median certified top-1 radius (l2): {s['median_top1_radius']:.4f}")
    kmax = max(res.ks)
    lines.append(f"unannotated items in the clean top-{kmax}: {res.unannotated[kmax]} of {res.n_queries * kmax}")
    if describe(res.decisions):
        lines.append(describe(res.decisions))
    return "\n".join(lines)


def report_json(res: RetrievalResult) -> dict:
    def lst(t: torch.Tensor | None):
        return (
            None if t is None else [[None if v != v else v for v in row] for row in t.reshape(-1, t.shape[-1]).tolist()]
        )

    return {
        "version": SCHEMA_VERSION,
        "kind": "retrieval",
        "metric": res.metric,
        "data": res.data,
        "data_note": res.note,
        "n_queries": res.n_queries,
        "n_scored_queries": res.n_scored,
        "n_gallery": res.n_gallery,
        "ks": res.ks,
        "norm": res.norm,
        "eps": res.eps,
        "threat_model": res.threat.to_json(),
        "attacks": res.attacks,
        "steps": res.steps,
        "seconds": res.seconds,
        "summary": res.summary(),
        "unannotated_in_top_k": {str(k): v for k, v in res.unannotated.items()},
        "decisions": res.decisions,
        "recall_definition": "|annotated positives in top k| / |annotated positives|, mean over queries with positives",
        "per_query": {
            "clean_recall": {str(k): lst(v[None])[0] for k, v in res.clean_recall.items()},
            "clean_ap": lst(res.clean_ap[None])[0],
            "attacked_recall": None
            if res.attacked_recall is None
            else {str(k): lst(v) for k, v in res.attacked_recall.items()},
            "certified_recall": None
            if res.certified_recall is None
            else {str(k): lst(v) for k, v in res.certified_recall.items()},
            "top1_radius": None if res.top1_radius is None else lst(res.top1_radius[None])[0],
        },
        "versions": package_versions(),
        "runtime": runtime_info(),
    }


def recall_figure(res: RetrievalResult):
    """recall@k against epsilon: clean (dashed), attacked (solid), certified (dotted), a colour per k."""
    from robustsim.plots import Curve, accuracy_figure

    s = res.summary()
    curves = []
    for c, k in enumerate(res.ks):
        clean = s["clean"][f"recall@{k}"]
        curves.append(Curve(f"recall@{k} clean", [0.0, *res.eps], [clean] * (len(res.eps) + 1), "--", c))
        if s["attacked"] is not None:
            curves.append(
                Curve(f"recall@{k} attacked", [0.0, *res.eps], [clean, *s["attacked"][f"recall@{k}"]], "-", c)
            )
        if s["certified"] is not None:
            curves.append(Curve(f"recall@{k} certified", res.eps, s["certified"][f"recall@{k}"], ":", c))
    return accuracy_figure(curves, res.norm, f"{res.metric} on {res.data}", ylabel="recall@k (%)")


def query_figure(res: RetrievalResult):
    """Each example query with its top-k, clean and (when attacked) after the attack at the largest epsilon."""
    from robustsim.plots import retrieval_grid

    ex = res.examples
    rows = []
    for i in range(len(ex.get("query", []))):
        rows.append((f"query {i}", ex["query"][i], ex["top_images"][i], ex["top_labels"][i].tolist()))
        if "adv" in ex:
            title = f"attacked {res.norm} {res.threat.label(res.eps[-1])}"
            rows.append((title, ex["adv"][i], ex["adv_top_images"][i], ex["adv_top_labels"][i].tolist()))
    return retrieval_grid(rows)


class RetrievalReport:
    """A retrieval result as a report (:mod:`robustsim.reports`): report.json, report.md, recall.png and,
    with examples, queries.png."""

    def __init__(self, res: RetrievalResult) -> None:
        self.res = res

    def to_json(self) -> dict:
        return report_json(self.res)

    def markdown(self) -> str:
        res = self.res
        head = f"# Retrieval: {md_code(res.metric)} on {md_code(res.data)}"
        return f"{head}\n\n{md_code(res.note)}\n\n```\n{retrieval_table(res)}\n```\n"

    def figures(self) -> dict:
        out = {"recall.png": recall_figure(self.res)}
        if self.res.examples.get("query") is not None:
            out["queries.png"] = query_figure(self.res)
        return out
