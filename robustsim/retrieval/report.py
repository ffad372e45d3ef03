"""Retrieval report: the printed table, report.json / report.md and the two figures, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from robustsim.audit import package_versions
from robustsim.data.retrieval import RetrievalSet
from robustsim.io import atomic_write, write_json
from robustsim.retrieval.evaluate import RetrievalResult
from robustsim.table import format_table, pct
from robustsim.threads import runtime_info

SCHEMA_VERSION = 1


def _eps_text(e: float, norm: str) -> str:
    return f"{e * 255:.3g}/255" if norm == "linf" else f"{e:.3g}"


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
                (f"{kind} {res.norm} {_eps_text(e, res.norm)}", *[pct(block[f"recall@{k}"][i]) for k in res.ks], m_ap)
            )
    lines = [format_table(head, rows), f"ROC-AUC over labelled pairs: {pct(s['clean']['roc_auc'])}"]
    if s["targeted_success"] is not None:
        pairs = zip(res.eps, s["targeted_success"], strict=True)
        rates = ", ".join(f"{_eps_text(e, res.norm)}: {pct(v)}" for e, v in pairs)
        lines.append(f"targeted (random non-positive pulled to top-1) success: {rates}")
    if "median_top1_radius" in s:
        lines.append(f"median certified top-1 radius (l2): {s['median_top1_radius']:.4f}")
    kmax = max(res.ks)
    lines.append(f"unannotated items in the clean top-{kmax}: {res.unannotated[kmax]} of {res.n_queries * kmax}")
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
        "attacks": res.attacks,
        "steps": res.steps,
        "seconds": res.seconds,
        "summary": res.summary(),
        "unannotated_in_top_k": {str(k): v for k, v in res.unannotated.items()},
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


def query_figure(res: RetrievalResult, data: RetrievalSet):
    """Each example query with its top-k, clean and (when attacked) after the attack at the largest epsilon."""
    from robustsim.plots import retrieval_grid

    ex = res.examples
    rows = []
    for i in range(len(ex.get("query", []))):
        top = torch.stack([data.gallery[int(j)] for j in ex["top"][i]])
        rows.append((f"query {i}", ex["query"][i], top, ex["top_labels"][i].tolist()))
        if "adv" in ex:
            adv_top = torch.stack([data.gallery[int(j)] for j in ex["adv_top"][i]])
            title = f"attacked {res.norm} {_eps_text(res.eps[-1], res.norm)}"
            rows.append((title, ex["adv"][i], adv_top, ex["adv_top_labels"][i].tolist()))
    return retrieval_grid(rows)


def write_retrieval(res: RetrievalResult, data: RetrievalSet, out: Path) -> list[Path]:
    """report.json, report.md, recall.png and queries.png in ``out`` (each written atomically)."""
    from robustsim.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "report.json", report_json(res))]
    md_text = f"# Retrieval: {res.metric} on {res.data}\n\n{res.note}\n\n```\n{retrieval_table(res)}\n```\n"
    files.append(atomic_write(out / "report.md", lambda tmp: tmp.write_text(md_text)))
    files.append(save_figure(recall_figure(res), out / "recall.png"))
    if res.examples.get("query") is not None:
        files.append(save_figure(query_figure(res, data), out / "queries.png"))
    return files
