"""Benchmark outputs: one card per metric (in the spirit of RobustBench's model_info JSON), a leaderboard as
Markdown and as a self-contained HTML page sortable by any column, and a figure (clean vs robust 2AFC per
metric, certified marked)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from robustsim.ball import L2
from robustsim.bench.protocol import Cell, Protocol, protocol_cells
from robustsim.certify.adaptive import decisions, describe
from robustsim.data.triplets import TripletDataset
from robustsim.io import atomic_write, publish, staging
from robustsim.metrics.base import Metric
from robustsim.plots import plain_text
from robustsim.text import figure_text, file_stem, md_cell, md_code, visible
from robustsim.threat import format_eps

CENTER_NOTE = (
    " center bound: the median certified bound (metric units, probability 1 - alpha each) on how far the "
    "center-smoothed output of a reference image moves within that l2 radius (Kumar & Goldstein 2021; metrics "
    "without a Lipschitz certificate, bench --smoothing; '-': none, or the radius needs more draws)."
)


def smoothed(method: str) -> bool:
    """Whether a certified cell's ``method`` (bench.run.certified_cells writes ``smoothing sigma=S``) certifies the
    smoothed metric rather than the metric itself."""
    return method.startswith("smoothing")


@dataclass(frozen=True)
class Column:
    """A leaderboard column: the cell it reads and its title."""

    cell: Cell
    title: str


def columns(protocol: Protocol, center: bool = False) -> list[Column]:
    """The leaderboard's number columns, in order: clean, robust per threat model and radius, certified; with
    ``center``, the center-smoothing bound at the first certified radius (bench --smoothing)."""
    clean, robust, certified = protocol_cells(protocol)
    cols = [Column(clean[0], "clean")]
    for cells in robust:
        cols += [Column(c, f"{c.threat.norm} {c.threat.label(c.eps)}") for c in cells if c.threat and c.eps]
    cols += [Column(c, f"cert. {format_eps(c.eps)}") for c in certified if c.eps is not None]
    if center and protocol.certified_eps:
        e = protocol.certified_eps[0]
        cols.append(Column(Cell("bound", e), f"center bound {format_eps(e)}"))
    return cols


def has_center(cards: dict) -> bool:
    """Whether any card holds center-smoothing bounds (its leaderboard then shows their column)."""
    return any(
        any(v is not None for v in (c.get("certified", {}).get("center_bound") or {}).values()) for c in cards.values()
    )


def cell_value(cells: dict, cell: Cell) -> float | None:
    """The number a cell holds (score, robust or certified accuracy), None when it has none."""
    c = cells.get(cell.name) or {}
    for key in ("score", "robust", "certified"):
        if isinstance(c.get(key), (int, float)):
            return float(c[key])
    return None


@dataclass
class Row:
    """One leaderboard row: the metric, its numbers by column title, its parameter count and time."""

    metric: str
    values: dict[str, float | None]
    parameters: int
    seconds: float
    reported: dict[str, float] | None = None  # the paper's figures (%) by column title
    n: int | None = None  # triplets its cells used
    certificate: str = "none"  # the kind of its certified cells: lipschitz, smoothing sigma=S, none

    @property
    def smoothed(self) -> bool:
        return smoothed(self.certificate)

    def sort_key(self, title: str) -> float:
        v = self.values.get(title)
        return -v if v is not None else 1.0


def make_card(
    name: str,
    metric: Metric,
    fingerprint: str,
    cells: dict,
    protocol: Protocol,
    data_spec: str,
    data: TripletDataset,
    seconds: float,
) -> dict:
    """The card of one metric: provenance, protocol, every number with its timing, published figures."""
    from robustsim.provenance import package_versions
    from robustsim.threads import runtime_info
    from robustsim.weights import expected_sha, record
    from robustsim.zoo import list_metrics, metric_entry

    entry = metric_entry(name) if name in list_metrics() else None
    files = {}
    for f in entry.all_files() if entry else ():
        rec = record(f)
        files[f] = {"pin": rec.pin, "sha256": expected_sha(rec), "source": rec.source, "license": rec.license}
    _, robust_cells, certified_cells = protocol_cells(protocol)
    robust = {
        cs[0].threat.key(): {cs[0].threat.label(c.eps): cell_value(cells, c) for c in cs if c.eps is not None}
        for cs in robust_cells
        if cs and cs[0].threat is not None
    }
    first = cells.get(certified_cells[0].name) or {} if certified_cells else {}
    return {
        "name": name,
        "source": entry.description if entry else str(name),
        "weights": {"fingerprint": fingerprint, "files": files},
        "parameters": sum(p.numel() for p in metric.parameters()),
        "protocol": protocol.to_json(),
        "protocol_text": protocol.describe(len(data)),
        "data": {"spec": data_spec, "name": data.name, "n": len(data), "identity": data.identity},
        "clean": cell_value(cells, Cell("clean")),
        "robust": robust,
        "certified": {
            "method": first.get("method", "none"),
            **{k: first[k] for k in ("n", "alpha", "abstain_rate") if first.get(k) is not None},
            **{format_eps(c.eps): cell_value(cells, c) for c in certified_cells if c.eps is not None},
            "center_bound": {
                format_eps(c.eps): (cells.get(c.name) or {}).get("center_bound")
                for c in certified_cells
                if c.eps is not None
            },
        },
        "timings": {
            cell: {k: v for k, v in (c or {}).items() if k in ("seconds", "images_per_s")} for cell, c in cells.items()
        },
        "seconds": seconds,
        "decisions": {"procedure": decisions(metric)["procedure"]},  # its counts depend on what a resume reused
        "reported": reported_for(entry.reported if entry else {}, protocol),
        "reported_source": reported_source(protocol),
        "versions": package_versions(),
        "runtime": runtime_info(),
    }


def reported_for(reported, protocol: Protocol) -> dict[str, float]:
    """A zoo row's published figures (%) that a card under ``protocol`` can stand beside, by column title: the
    protocol's own (``croce2024``: the paper's attack and radii), and protocol-independent ones (clean, ``"*"``)."""
    titles = {c.title for c in columns(protocol)}
    merged = {**reported.get("*", {}), **reported.get(protocol.name, {})}
    return {k: float(v) for k, v in merged.items() if k in titles and v is not None}


def reported_source(protocol: Protocol) -> str:
    from robustsim.zoo.rows import REPORTED_SOURCES

    return REPORTED_SOURCES.get(protocol.name, REPORTED_SOURCES["*"])


def card_value(card: dict, column: Column) -> float | None:
    """The number of ``column`` on a card."""
    cell = column.cell
    if cell.kind == "clean":
        return card["clean"]
    if cell.kind == "robust" and cell.threat is not None and cell.eps is not None:
        return card["robust"].get(cell.threat.key(), {}).get(cell.threat.label(cell.eps))
    if cell.kind == "bound" and cell.eps is not None:
        return (card["certified"].get("center_bound") or {}).get(format_eps(cell.eps))
    return card["certified"].get(format_eps(cell.eps)) if cell.eps is not None else None


def leaderboard_rows(cards: dict, protocol: Protocol) -> list[Row]:
    """One row per card, sorted by robust accuracy at the first threat model's first radius (best first)."""
    rows = [card_row(name, card, protocol) for name, card in cards.items()]
    return sorted(rows, key=lambda r: r.sort_key(columns(protocol)[1].title))


def card_row(name: str, card: dict, protocol: Protocol) -> Row:
    """A card's leaderboard row: its numbers by column, the paper's figures (numbers only), the triplets used."""
    values = {c.title: card_value(card, c) for c in columns(protocol, center=True)}
    reported = {k: v for k, v in (card.get("reported") or {}).items() if isinstance(v, (int, float))} or None
    n, certificate = (card.get("data") or {}).get("n"), str((card.get("certified") or {}).get("method", "none"))
    return Row(name, values, card["parameters"], card["seconds"], reported, n, certificate)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _shown(row: Row, column: Column) -> str:
    """Our number, with the paper's beside it where the paper reports one (``86.1 (paper 85.1)``); a
    center-smoothing bound in the metric's units."""
    v = row.values[column.title]
    if column.cell.kind == "bound":
        return "-" if v is None else f"{v:.4g}"
    if column.cell.kind == "certified" and v is not None and row.smoothed:
        return f"{_pct(v)} (smoothed)"  # a certificate of the smoothed metric, never beside a proof unmarked
    paper = (row.reported or {}).get(column.title)
    return _pct(v) if paper is None else f"{_pct(v)} (paper {paper:.1f})"


SMOOTHED_NOTE = (
    " (smoothed): a randomized-smoothing certificate of the SMOOTHED metric (Gaussian noise on the reference; sigma, "
    "n, alpha and its abstain rate on the metric's card), sound with probability 1 - alpha; unmarked: a Lipschitz "
    "proof for the metric itself."
)
SORT_NOTE = "Rows are sorted by robust accuracy at the first threat model's smallest radius (best first)."


def notes(rows: list[Row], protocol: Protocol, center: bool) -> str:
    """What the leaderboard's columns and marks mean: only the marks its rows use."""
    text = (
        "2AFC accuracy (%); robust = worst case over the protocol's attacks (reference perturbed); cert. = certified "
        "('-' = no certificate)."
    )
    if any(r.smoothed for r in rows):
        text += SMOOTHED_NOTE
    if any(r.reported for r in rows):
        text += (
            f" (paper X): the figure the metric's paper reports for this column ({reported_source(protocol)}): a run "
            "on that data should reproduce it."
        )
    return text + (CENTER_NOTE if center else "") + " " + SORT_NOTE


def _cells(row: Row, cols: list[Column]) -> list[str]:
    n = "?" if row.n is None else str(row.n)
    return [md_cell(row.metric), *[_shown(row, c) for c in cols], n, f"{row.parameters:,}", f"{row.seconds:.1f}"]


def used_n(rows: list[Row]) -> int | None:
    """The triplets every row's cells used, when they all used the same number."""
    ns = {r.n for r in rows}
    return ns.pop() if len(ns) == 1 else None


def write_leaderboard(cards: dict, skipped: dict, protocol: Protocol, data_spec: str, out: Path) -> list[Path]:
    """leaderboard.md, leaderboard.html and leaderboard.png in ``out`` (atomically)."""
    center = has_center(cards)
    cols = columns(protocol, center)
    heads = ["metric", *[c.title for c in cols], "n", "params", "seconds"]
    rows = leaderboard_rows(cards, protocol)
    md = [
        f"# Leaderboard on {md_code(data_spec)}",
        "",
        protocol.describe(used_n(rows)) + ". n: the triplets each metric's cells used.",
        "",
        notes(rows, protocol, center),
        "",
        "![clean vs robust per metric](leaderboard.png)",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    md += ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    if skipped:
        md += ["", "Skipped:", ""] + [f"- {md_code(name)}: {md_code(why)}" for name, why in skipped.items()]
    from robustsim.plots import save_figure

    with staging(out, "the leaderboard") as stage:  # png, md and html appear together or not at all
        png = save_figure(_figure(rows, cols, protocol), stage / "leaderboard.png")
        (stage / "leaderboard.md").write_text("\n".join(md) + "\n")
        figure = base64.b64encode(png.read_bytes()).decode()
        page = _html(heads, rows, cols, protocol, data_spec, skipped, notes(rows, protocol, center), figure)
        (stage / "leaderboard.html").write_text(page)
        return publish([png, stage / "leaderboard.md", stage / "leaderboard.html"], out)


def _html(
    heads, rows: list[Row], cols: list[Column], protocol: Protocol, data_spec: str, skipped: dict, note: str, png: str
) -> str:
    """A self-contained page: one table (clicking a column header sorts by it, numbers as numbers), what its columns
    and marks mean, and the leaderboard's figure (embedded)."""
    body = []
    for r in rows:
        raw = [*(r.values[c.title] for c in cols), r.n, r.parameters, r.seconds]
        shown_name = html.escape(visible(r.metric))
        link = f'<a href="cards/{html.escape(file_stem(r.metric))}.html">{shown_name}</a>'
        cells = [f'<td data-v="{shown_name}">{link}</td>']
        for value, shown in zip(raw, _cells(r, cols)[1:], strict=True):
            key = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
            cells.append(f'<td data-v="{key}">{html.escape(shown)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f'<th data-col="{i}">{html.escape(h)}</th>' for i, h in enumerate(heads))
    skipped_html = "".join(
        f"<li><code>{html.escape(visible(k))}</code>: {html.escape(visible(v))}</li>" for k, v in skipped.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>robustsim leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 4px 10px; border-bottom: 1px solid #ccc; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} th {{ cursor: pointer; background: #eef; white-space: nowrap; }}
td {{ white-space: nowrap; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
</style></head><body>
<h1>robustsim leaderboard on <code>{html.escape(visible(data_spec))}</code></h1>
<p>{html.escape(protocol.describe(used_n(rows)))}. n: triplets per cell.</p>
<p>{html.escape(note)} Click a column to sort by it.</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{f"<p>Skipped:</p><ul>{skipped_html}</ul>" if skipped else ""}
<figure><img src="data:image/png;base64,{png}" alt="clean vs robust per metric" style="max-width: 100%">
<figcaption>Clean against robust 2AFC accuracy per metric (black edge: certified).</figcaption></figure>
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


def kind(row: Row) -> str:
    """How a row's certified accuracy was certified, in a legend's words."""
    return "certified, smoothed" if row.smoothed else "certified"


@plain_text
def _figure(rows: list[Row], cols: list[Column], protocol: Protocol):
    import matplotlib.pyplot as plt

    from robustsim.plots import legend_outside, series_style

    first = protocol.threat_models[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    clean_col, robust_col = cols[0].title, cols[1].title
    cert_col = next((c.title for c in cols if c.cell.kind == "certified"), None)
    for i, r in enumerate(rows):
        clean, robust = r.values[clean_col], r.values[robust_col]
        cert = r.values.get(cert_col) if cert_col else None
        if clean is None or robust is None:
            continue
        colour, marker = series_style(i)
        ax.scatter(
            100 * clean,
            100 * robust,
            color=colour,
            s=110 if cert else 60,
            marker=marker,
            edgecolors="black" if cert else "none",
            linewidths=1.5,
            label=figure_text(r.metric) + (f" ({kind(r)})" if cert else ""),
        )
    lim = [0, 100]
    ax.plot(lim, lim, ":", color="grey", lw=1)
    ax.set_xlabel("clean 2AFC (%)")
    ax.set_ylabel(f"robust 2AFC at {first.norm} {first.label(first.eps[0])} (%)")
    n = used_n(rows)
    ax.set_title(f"clean vs robust per metric, n={'varies' if n is None else n} (black edge: certified)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


def certificate_text(card: dict) -> str:
    """Which certificate the card's certified columns are (one line)."""
    cert = card.get("certified") or {}
    method = str(cert.get("method", "none"))
    if method == "lipschitz":
        text = "Certified columns: a Lipschitz proof for the metric itself (sound l2 radii, the reference moving)."
        how = describe(card.get("decisions") or {})
        return f"{text} {how[0].upper()}{how[1:]}: certified as the float64 deployment." if how else text
    if smoothed(method):
        rate = cert.get("abstain_rate")
        abstained = "" if rate is None else f", abstained on {100 * rate:.1f} % of the triplets"
        return (
            f"Certified columns: randomized smoothing ({method.split(' ', 1)[1]}, n={cert.get('n')}, "
            f"alpha={cert.get('alpha')}{abstained}): a certificate of the SMOOTHED metric, not of the metric itself."
        )
    return "No certificate: the metric has no Lipschitz bound (bench --smoothing certifies its smoothed version)."


def card_markdown(name: str, card: dict, protocol: Protocol) -> str:
    """A card as a person reads it: provenance, the protocol, every number (with the paper's where known), the
    certificate's kind, its weight files, a link back to the leaderboard."""
    row = card_row(name, card, protocol)
    cols = columns(protocol, has_center({name: card}))
    files = card.get("weights", {}).get("files", {})
    weights = [
        "| weight file | pin | licence |",
        "|---|---|---|",
        *[f"| {md_cell(f)} | {md_cell(v.get('pin'))} | {md_cell(v.get('license'))} |" for f, v in files.items()],
    ]
    if not files:
        fingerprint = card.get("weights", {}).get("fingerprint", "?")
        weights = [f"Weight files: none to fetch (built in, or shipped in the package); fingerprint `{fingerprint}`."]
    lines = [
        "[the leaderboard](../leaderboard.html)",
        "",
        f"# {md_code(name)}",
        "",
        f"{md_cell(card.get('source', ''))}. Data: {md_code(card.get('data', {}).get('spec', ''))} "
        f"({card.get('data', {}).get('n', '?')} triplets). {card.get('protocol_text', protocol.describe())}.",
        "",
        "| " + " | ".join(["metric", *[c.title for c in cols], "n", "params", "seconds"]) + " |",
        "|" + "---|" * (len(cols) + 4),
        "| " + " | ".join(_cells(row, cols)) + " |",
        "",
        "2AFC accuracy (%). " + (f"(paper X): {card.get('reported_source', '')}." if row.reported else ""),
        "",
        certificate_text(card),
        "",
        *weights,
    ]
    return "\n".join(lines) + "\n"


@plain_text
def card_figure(name: str, card: dict, protocol: Protocol):
    """Robust accuracy against epsilon for each threat model of the protocol, and the certified curve (l2)."""
    import matplotlib.pyplot as plt

    from robustsim.plots import Curve, draw_curves

    models = [t for t in protocol.threat_models if t.eps]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 3.8), squeeze=False)
    for ax, threat in zip(axes[0], models, strict=True):
        robust = card["robust"].get(threat.key(), {})
        curves = [
            Curve("clean", list(threat.eps), [card["clean"]] * len(threat.eps), "--"),
            Curve("robust", list(threat.eps), [robust.get(threat.label(e)) for e in threat.eps]),
        ]
        if threat.ball is L2 and card["certified"].get("method", "none") != "none":
            eps = list(protocol.certified_eps)
            kind = "certified (smoothed)" if smoothed(str(card["certified"]["method"])) else "certified"
            curves.append(Curve(kind, eps, [card["certified"].get(format_eps(e)) for e in eps], ":"))
        shown = [c for c in curves if None not in c.values]
        draw_curves(ax, shown, threat.norm, f"{name}: {threat.norm}", "2AFC accuracy (%)")
    fig.tight_layout()
    return fig


def write_card_page(name: str, card: dict, protocol: Protocol, path: Path, within: Path | None = None) -> Path:
    """``cards/<name's file stem>.html``: the card as one offline page (its figure embedded, its JSON in full below
    the tables, a link back to the leaderboard)."""
    from robustsim.html import report_page
    from robustsim.plots import save_figure

    with staging(within or path.parent, "a card") as stage:  # the figure is drawn inside the output folder
        png = save_figure(card_figure(name, card, protocol), stage / "card.png")
        markdown = card_markdown(name, card, protocol)
        page = report_page(f"robustsim card: {visible(name)}", markdown, {"accuracy.png": png}, card, up=1)
    return atomic_write(path, lambda p: p.write_text(page), within)
