"""Benchmark outputs: one card per metric (in the spirit of RobustBench's model_info JSON), a leaderboard as
Markdown and as a self-contained HTML page sortable by any column, and a figure (clean vs robust 2AFC per
metric, certified marked)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from robustsim.bench.protocol import Protocol
from robustsim.data.triplets import TripletDataset
from robustsim.io import atomic_write
from robustsim.metrics.base import Metric


def _eps_label(norm: str, e: float) -> str:
    return f"{e * 255:g}/255" if norm == "linf" else f"{e:g}"


def columns(protocol: Protocol) -> list[tuple[str, str, object]]:
    """(cell name, column title, how to read the card's number) of the leaderboard, in order."""
    cols: list[tuple[str, str, object]] = [("clean", "clean", lambda card: card["clean"])]
    for tm in protocol.threat_models:
        for e in tm.eps:
            label = _eps_label(tm.norm, e)
            cols.append(
                (
                    f"robust-{tm.key()}-{e:.6g}",
                    f"{tm.norm} {label}",
                    lambda card, k=tm.key(), label=label: card["robust"][k][label],
                )
            )
    for e in protocol.certified_eps:
        label = f"{round(e * 255)}/255"
        cols.append((f"certified-l2-{e:.6g}", f"cert. {label}", lambda card, label=label: card["certified"].get(label)))
    return cols


def _value(cells: dict, cell: str) -> float | None:
    c = cells.get(cell) or {}
    for key in ("score", "robust", "certified"):
        if isinstance(c.get(key), (int, float)):
            return float(c[key])
    return None


def make_card(
    name: str,
    metric: Metric,
    fingerprint: str,
    cells: dict,
    protocol: Protocol,
    data_spec: str,
    data: TripletDataset,
    reported: dict,
    seconds: float,
) -> dict:
    """The card of one metric: provenance, protocol, every number with its timing, published figures."""
    from robustsim.audit import package_versions
    from robustsim.metrics.registry import _REGISTRY
    from robustsim.threads import runtime_info
    from robustsim.weights import expected_sha, record

    entry = _REGISTRY.get(name)
    files = {}
    for f in entry.files if entry else ():
        rec = record(f)
        files[f] = {"pin": rec.pin, "sha256": expected_sha(rec), "source": rec.source, "license": rec.license}
    robust = {
        tm.key(): {_eps_label(tm.norm, e): _value(cells, f"robust-{tm.key()}-{e:.6g}") for e in tm.eps}
        for tm in protocol.threat_models
    }
    cert_cells = [cells.get(f"certified-l2-{e:.6g}") or {} for e in protocol.certified_eps]
    method = cert_cells[0].get("method", "none") if cert_cells else "none"
    return {
        "name": name,
        "source": entry.description if entry else str(name),
        "weights": {"fingerprint": fingerprint, "files": files},
        "parameters": sum(p.numel() for p in metric.parameters()),
        "protocol": protocol.to_json(),
        "protocol_text": protocol.describe(),
        "data": {"spec": data_spec, "name": data.name, "n": len(data), "identity": data.identity},
        "clean": _value(cells, "clean"),
        "robust": robust,
        "certified": {
            "method": method,
            **{
                f"{round(e * 255)}/255": c.get("certified")
                for e, c in zip(protocol.certified_eps, cert_cells, strict=True)
            },
        },
        "timings": {
            cell: {k: v for k, v in (c or {}).items() if k in ("seconds", "images_per_s")} for cell, c in cells.items()
        },
        "seconds": seconds,
        "reported": reported,
        "versions": package_versions(),
        "runtime": runtime_info(),
    }


def _compute_seconds(cells: dict, protocol: Protocol) -> float:
    """Compute time of the metric's cells (an attack run serves every epsilon of its threat model: once)."""
    first = [f"robust-{tm.key()}-{tm.eps[0]:.6g}" for tm in protocol.threat_models]
    first += ["clean", f"certified-l2-{protocol.certified_eps[0]:.6g}"]
    return float(sum((cells.get(c) or {}).get("seconds", 0.0) for c in first))


def leaderboard_rows(cards: dict, protocol: Protocol) -> list[list]:
    rows = []
    for name, card in cards.items():
        row: list = [name, *(read(card) for _, _, read in columns(protocol)), card["parameters"], card["seconds"]]
        rows.append(row)
    return sorted(rows, key=lambda r: -(r[2] if isinstance(r[2], float) else -1))  # by robust at the first radius


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def write_leaderboard(cards: dict, skipped: dict, protocol: Protocol, data_spec: str, out: Path) -> list[Path]:
    """leaderboard.md, leaderboard.html and leaderboard.png in ``out`` (atomically)."""
    heads = ["metric", *[title for _, title, _ in columns(protocol)], "params", "seconds"]
    rows = leaderboard_rows(cards, protocol)
    fmt = lambda r: [r[0], *[_pct(v) for v in r[1:-2]], f"{r[-2]:,}", f"{r[-1]:.1f}"]  # noqa: E731
    md = [
        f"# Leaderboard on `{data_spec}`",
        "",
        protocol.describe() + ".",
        "",
        "2AFC accuracy (%); robust = worst case over the protocol's attacks (reference perturbed); cert. = certified "
        "(Lipschitz proof, or smoothing where asked; '-' = no certificate).",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    md += ["| " + " | ".join(fmt(r)) + " |" for r in rows]
    if skipped:
        md += ["", "Skipped:", ""] + [f"- `{name}`: {why}" for name, why in skipped.items()]
    files = [atomic_write(out / "leaderboard.md", lambda p: p.write_text("\n".join(md) + "\n"))]
    files.append(
        atomic_write(
            out / "leaderboard.html", lambda p: p.write_text(_html(heads, rows, fmt, protocol, data_spec, skipped))
        )
    )
    from robustsim.plots import save_figure

    files.append(save_figure(_figure(rows, protocol), out / "leaderboard.png"))
    return files


def _html(heads, rows, fmt, protocol: Protocol, data_spec: str, skipped: dict) -> str:
    """A self-contained page: one table; clicking a column header sorts by it (numbers as numbers)."""
    body = []
    for r in rows:
        cells = [f'<td data-v="{html.escape(str(r[0]))}">{html.escape(r[0])}</td>']
        for raw, shown in zip(r[1:], fmt(r)[1:], strict=True):
            key = "" if raw is None else f"{raw:.6g}" if isinstance(raw, float) else str(raw)
            cells.append(f'<td data-v="{key}">{html.escape(shown)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f'<th data-col="{i}">{html.escape(h)}</th>' for i, h in enumerate(heads))
    skipped_html = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in skipped.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>robustsim leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 4px 10px; border-bottom: 1px solid #ccc; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} th {{ cursor: pointer; background: #eef; white-space: nowrap; }}
td {{ white-space: nowrap; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
</style></head><body>
<h1>robustsim leaderboard on <code>{html.escape(data_spec)}</code></h1>
<p>{html.escape(protocol.describe())}. 2AFC accuracy (%). Click a column to sort.</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{f"<p>Skipped:</p><ul>{skipped_html}</ul>" if skipped else ""}
<script>
document.querySelectorAll("#board th").forEach(function (th) {{
  th.addEventListener("click", function () {{
    var col = +th.dataset.col, tbody = document.querySelector("#board tbody");
    var asc = !th.classList.contains("asc");
    document.querySelectorAll("#board th").forEach(function (h) {{ h.classList.remove("asc", "desc"); }});
    th.classList.add(asc ? "asc" : "desc");
    var rows = Array.from(tbody.rows);
    rows.sort(function (a, b) {{
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (x === "") return 1; if (y === "") return -1;
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    }});
    rows.forEach(function (r) {{ tbody.appendChild(r); }});
  }});
}});
</script>
</body></html>
"""


def _figure(rows: list[list], protocol: Protocol):
    import matplotlib.pyplot as plt

    from robustsim.plots import OKABE_ITO

    first = protocol.threat_models[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cert_col = 1 + sum(len(t.eps) for t in protocol.threat_models) + 1
    for i, r in enumerate(rows):
        clean, robust, cert = r[1], r[2], r[cert_col]
        if clean is None or robust is None:
            continue
        ax.scatter(
            100 * clean,
            100 * robust,
            color=OKABE_ITO[i % len(OKABE_ITO)],
            s=60,
            marker="*" if cert else "o",
            label=r[0] + (" (certified)" if cert else ""),
        )
    lim = [0, 100]
    ax.plot(lim, lim, ":", color="grey", lw=1)
    ax.set_xlabel("clean 2AFC (%)")
    ax.set_ylabel(f"robust 2AFC at {first.norm} {_eps_label(first.norm, first.eps[0])} (%)")
    ax.set_title("clean vs robust per metric (stars: has a certificate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def load_cards(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cards").glob("*.json"))}
