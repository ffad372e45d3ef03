"""One writer for every report folder (audit, certify, retrieval, bench).

A report is a value with ``to_json()`` (strict JSON: the numbers), ``markdown()`` (the tables a person reads)
and ``figures()`` (file name -> matplotlib figure). :func:`write_report` writes ``report.json``,
``report.md``, the figures and ``report.html`` (one self-contained page: the tables, the figures embedded,
report.json in full; :mod:`robustsim.html`) into a folder, each atomically (a temporary file renamed into place),
and returns the paths written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Report(Protocol):
    def to_json(self) -> dict: ...

    def markdown(self) -> str: ...

    def figures(self) -> dict[str, Any]: ...


def write_report(report: Report, out: Path) -> list[Path]:
    """``report.json``, ``report.md``, every figure of ``report`` and ``report.html`` in ``out`` (atomically,
    each)."""
    from robustsim.html import report_page
    from robustsim.io import atomic_write, write_json
    from robustsim.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    data = report.to_json()
    files = [write_json(out / "report.json", data)]
    text = report.markdown()
    files.append(atomic_write(out / "report.md", lambda tmp: tmp.write_text(text)))
    figures = {}
    for name, fig in report.figures().items():
        figures[name] = save_figure(fig, out / name)
        files.append(figures[name])
    title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "robustsim report")
    page = report_page(title, text, figures, data)
    files.append(atomic_write(out / "report.html", lambda tmp: tmp.write_text(page)))
    return files
