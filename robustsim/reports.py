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
    """``report.json``, ``report.md``, every figure of ``report`` and ``report.html`` in ``out``: all of them or none.
    Every file is first written into a staging folder inside ``out``; only when all are complete are they moved
    into place (a failure before, a full disk or a figure that cannot be drawn, leaves ``out`` as it was). No link
    inside ``out`` is followed (:func:`robustsim.io.inside`)."""
    from robustsim.html import report_page
    from robustsim.io import publish, staging, write_json
    from robustsim.plots import save_figure

    with staging(out) as stage:
        data = report.to_json()
        staged = [write_json(stage / "report.json", data)]
        text = report.markdown()
        (stage / "report.md").write_text(text)
        staged.append(stage / "report.md")
        figures = {}
        for name, fig in report.figures().items():
            figures[name] = save_figure(fig, stage / name)
            staged.append(figures[name])
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "robustsim report")
        (stage / "report.html").write_text(report_page(title, text, figures, data))
        staged.append(stage / "report.html")
        return publish(staged, out)
